"""BraTS reader (2021 and 2023 naming) and the data lists the bundles build from it.

Layouts::

    <root>/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz        (2021)
    <root>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz  (2023)

:func:`find_brats_cases` lists the case folders; the data lists (pretraining, segmentation train/validation,
evaluation, inference) build on it, and take the synthetic demo data when ``dataset_dir`` is unset. The label
maps' conversion to tumour sub-regions is :class:`~mfassl_medical.transforms.ConvertBraTSLabels`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from pathlib import Path
from typing import Any, Sequence

from mfassl.options import as_float, as_int
from mfassl_medical.axes_file import attach_axes
from mfassl_medical.data.safe import DataList
from mfassl_medical.demo_data import dataset_dir_or_demo
from mfassl_medical.errors import DatasetLayoutError
from mfassl_medical.transforms.lesion import LESION_LABELS

__all__ = [
    "BRATS_MODALITIES",
    "find_brats_cases",
    "brats_case_files",
    "brats_pretrain_datalist",
    "brats_datalists",
    "brats_eval_data",
    "brats_inference_datalist",
]

logger = logging.getLogger(__name__)

BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""The fixed channel order of ``image`` in the data dicts."""

# file-name suffix (after the case id and a '_' or '-') -> modality
_SUFFIXES: dict[str, str] = {
    "t1": "t1", "t1n": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair",
    "seg": "seg",
}
_NII_RE = re.compile(r"^(?P<stem>.+?)(?P<ext>\.nii(\.gz)?)$", re.IGNORECASE)


def brats_case_files(case_dir: str | os.PathLike) -> dict[str, str]:
    """Map modality (``t1``, ``t1ce``, ``t2``, ``flair``, ``seg``) -> file for one case folder.

    Both namings are recognised: ``<case>_<mod>.nii.gz`` (2021) and ``<case>-<mod>.nii.gz`` (2023);
    ``t1c``/``t1n``/``t2w``/``t2f`` map to ``t1ce``/``t1``/``t2``/``flair``.

    Raises:
        DatasetLayoutError: two files claim the same modality.
    """
    case_dir = Path(case_dir)
    found: dict[str, str] = {}
    for f in sorted(case_dir.iterdir()):
        m = _NII_RE.match(f.name)
        if not m or not f.is_file():
            continue
        stem = m.group("stem")
        suffix = re.split(r"[_-]", stem)[-1].lower()
        mod = _SUFFIXES.get(suffix)
        if mod is None:
            continue
        if mod in found:
            raise DatasetLayoutError(f"two files for modality {mod!r}: {Path(found[mod]).name} and {f.name}", case_dir)
        found[mod] = str(f)
    return found


def _naming(case_dir: Path) -> str:
    return "2023" if re.match(r"^BraTS-[A-Z]+-\d+", case_dir.name) else "2021"


def _folder_contents(folder: Path) -> str:
    """``'2 sub-folder(s) (T1, T2) and 3 file(s) (*.dcm: 3)'``: what a folder holds, for messages."""
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [p for p in folder.iterdir() if p.is_file()]
    by_ext: dict[str, int] = {}
    for f in files:
        m = _NII_RE.match(f.name)
        ext = m.group("ext").lower() if m else (f.suffix.lower() or "(no extension)")
        by_ext[ext] = by_ext.get(ext, 0) + 1
    sub_txt = f"{len(subs)} sub-folder(s)" + (f" ({', '.join(subs[:5])}{', ...' if len(subs) > 5 else ''})"
                                              if subs else "")
    file_txt = f"{len(files)} file(s)" + (" (" + ", ".join(f"*{k}: {v}" for k, v in sorted(by_ext.items())) + ")"
                                          if files else "")
    return f"{sub_txt} and {file_txt}"


def find_brats_cases(root: str | os.PathLike, require_seg: bool = False, on_incomplete: str = "raise",
                     modalities: Sequence[str] = BRATS_MODALITIES) -> list[dict[str, Any]]:
    """List the cases of a BraTS folder as MONAI data dictionaries.

    Every visible sub-folder of ``root`` is a case folder (hidden ones, starting with ``.``, and
    ``__MACOSX`` are left out). A case folder that lacks one of ``modalities`` (or ``seg`` with
    ``require_seg``), or that holds no recognised NIfTI at all (e.g. DICOM sub-folders), is incomplete.

    Args:
        root: folder whose sub-folders are cases (one folder per case, sorted by name).
        require_seg: a case without a ``seg`` file is incomplete.
        on_incomplete: ``"raise"`` (default): an incomplete case folder raises, naming the folder and
            what it lacks or holds; ``"skip"``: it is left out with a warning, one summary warning gives the
            number skipped, and the returned list names it in ``excluded`` (so a run counts it as a bad sample).
        modalities: the channel order of ``image`` (default ``t1, t1ce, t2, flair``).

    Returns:
        a :class:`~mfassl_medical.data.safe.DataList` (a list) of one dict per case: ``image`` = list of paths in
        ``modalities`` order (load with ``LoadImaged`` + ``EnsureChannelFirstd`` to a ``(4, X, Y, Z)`` tensor),
        ``label`` = the seg path when there is one, ``case`` (the folder name), ``patient`` (same as ``case``,
        for :func:`~mfassl_medical.data.chexpert.split_by_patient`) and ``naming`` (``"2021"``/``"2023"``); its
        ``excluded`` lists the skipped folders as ``{"source": folder, "reason": ...}``.

    Raises:
        DatasetLayoutError: (a :class:`MedicalDataError`) ``root`` is not a folder, holds no usable
            case, or (``on_incomplete="raise"``) a case folder is incomplete.
    """
    if on_incomplete not in ("raise", "skip"):
        raise ValueError(f"on_incomplete must be 'raise' or 'skip', got {on_incomplete!r}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError("BraTS root is not a folder", root)
    cases: list[dict[str, Any]] = []
    skipped: list[str] = []
    excluded: list[dict[str, str]] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")
    need = list(modalities) + (["seg"] if require_seg else [])
    for case_dir in folders:
        files = brats_case_files(case_dir)
        if not files:
            dicom = any(p.is_dir() or p.suffix.lower() == ".dcm" for p in case_dir.iterdir())
            err = DatasetLayoutError(f"case folder holds no BraTS NIfTI file (<case>_t1.nii.gz ... or "
                                     f"<case>-t1n.nii.gz ...); it holds {_folder_contents(case_dir)}"
                                     + (" (DICOM series? convert them to NIfTI first)" if dicom else ""), case_dir)
        else:
            missing = [m for m in need if m not in files]
            err = (DatasetLayoutError(f"case is missing modality file(s) {missing}; found {sorted(files)}", case_dir)
                   if missing else None)
        if err is not None:
            if on_incomplete == "raise":
                raise err
            logger.warning("skipping incomplete BraTS case: %s", err)
            skipped.append(case_dir.name)
            excluded.append({"source": str(case_dir), "reason": err.reason})
            continue
        rec: dict[str, Any] = {
            "image": [files[m] for m in modalities],
            "case": case_dir.name,
            "patient": case_dir.name,
            "naming": _naming(case_dir),
        }
        if "seg" in files:
            rec["label"] = files["seg"]
        cases.append(rec)
    if skipped:
        logger.warning("BraTS %s: skipped %d of %d case folder(s) (on_incomplete='skip'): %s%s", root, len(skipped),
                       len(folders), ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
    if not cases:
        raise DatasetLayoutError("no BraTS case folders (with *_t1/_t1ce/_t2/_flair or -t1n/-t1c/-t2w/-t2f "
                                 "NIfTI files) found" + (f"; {len(skipped)} incomplete folder(s) skipped"
                                                         if skipped else ""), root)
    logger.info("BraTS %s: %d cases", root, len(cases))
    return DataList(cases, excluded=excluded)


def brats_pretrain_datalist(dataset_dir: str | None = None, max_cases: int | None = None,
                            axes_file: str | None = None) -> list[dict[str, Any]]:
    """BraTS cases as ``{"image": [t1, t1ce, t2, flair], "case": ...}``; ``dataset_dir`` None = the demo data.

    Args:
        dataset_dir: a BraTS root with one folder per case (2021 or 2023 naming), or None/"" for the
            synthetic demo set (built on first use).
        max_cases: keep only the first cases (quick runs).
        axes_file: precomputed axes (``python -m mfassl_medical axes DIR --kind brats``); each case found in it
            gets ``image_axis_precomputed`` and is not estimated in the loader. None: estimate lazily.

    Returns:
        a :class:`~mfassl_medical.data.safe.DataList`: the case folders lacking a modality (or holding only
        DICOM) are left out and listed in its ``excluded``; the bundles count them as bad samples (named in
        ``report.json``, counted toward ``max_bad_fraction``).
    """
    max_cases = as_int(max_cases, "max_cases", low=0, allow_none=True)
    root = dataset_dir_or_demo(dataset_dir, "brats")
    cases = find_brats_cases(root, require_seg=False, on_incomplete="skip")
    items = [{"image": c["image"], "source": list(c["image"]), "case": c.get("case", "")} for c in cases]
    excluded = cases.excluded
    if max_cases and len(items) > max_cases:  # a quick run over the first cases: the folders left out among them
        items = items[:max_cases]
        last = items[-1]["case"]
        excluded = [e for e in excluded if Path(e["source"]).name < last]
    return DataList(attach_axes(items, axes_file, root, "brats"), excluded=excluded)


def brats_datalists(dataset_dir: str | os.PathLike | None = None, val_fraction: float = 0.25, seed: int = 0,
                    max_cases: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train/validation data dicts of a BraTS folder, or of the demo data when ``dataset_dir`` is unset.

    Args:
        dataset_dir: BraTS root (2021 or 2023 naming, see :func:`find_brats_cases`); None or ``""`` builds/reuses
            the synthetic demo data (:func:`~mfassl_medical.demo_data.build_demo_data`).
        val_fraction: share of cases held out (at least one case).
        seed: the shuffle before the split (the same seed gives the same split).
        max_cases: keep only the first cases after the shuffle (quick runs).

    Returns:
        ``{"train": [...], "val": [...], "all": [...]}``; each dict has ``image`` (4 paths, t1/t1ce/t2/flair),
        ``label`` (seg path) and ``case``. Cases without ``seg`` are left out.
    """
    val_fraction = as_float(val_fraction, "val_fraction", low=0.0, high=1.0)
    seed, max_cases = as_int(seed, "seed"), as_int(max_cases, "max_cases", low=0, allow_none=True)
    root = dataset_dir_or_demo(dataset_dir, "brats")
    cases = [c for c in find_brats_cases(root) if "label" in c]
    if len(cases) < 2:
        raise ValueError(f"need at least 2 labelled BraTS cases in {root}, found {len(cases)}.")
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    cases = [cases[i] for i in order]
    if max_cases is not None:
        cases = cases[:max(2, int(max_cases))]
    n_val = min(len(cases) - 1, max(1, int(math.ceil(val_fraction * len(cases)))))
    return {"train": cases[n_val:], "val": cases[:n_val], "all": cases}


def brats_eval_data(dataset_dir: str | None = None, test_fraction: float = 0.25, seed: int = 0,
                    max_cases: int | None = None) -> dict[str, Any]:
    """BraTS cases with their segmentation for the evaluation, split by case (seeded, :func:`brats_datalists`).

    Returns:
        ``{"train": [...], "test": [...], "label_names": ["lesion_present", "lesion_left"], "lateral":
        [False, True]}``; each item has ``image`` (4 paths), ``label`` (seg path), ``case`` and ``source``. The labels
        themselves are computed by :class:`~mfassl_medical.transforms.LesionLabelsd` in the preprocessing.
    """
    lists = brats_datalists(dataset_dir, val_fraction=test_fraction, seed=seed, max_cases=max_cases)

    def item(c: dict[str, Any]) -> dict[str, Any]:
        return {"image": c["image"], "label": c["label"], "case": c.get("case", ""), "source": list(c["image"])}

    return {"train": [item(c) for c in lists["train"]], "test": [item(c) for c in lists["val"]],
            "label_names": list(LESION_LABELS), "lateral": [False, True]}


def brats_inference_datalist(input_dir: str | None = None, input_files: Sequence[Sequence[str]] | None = None,
                             dataset_dir: str | None = None) -> list[dict[str, Any]]:
    """Multi-modal volumes to embed: ``input_files`` (a list of ``[t1, t1ce, t2, flair]`` paths), else the BraTS
    case folders under ``input_dir``, else the cases of ``dataset_dir`` (the demo data when unset)."""
    if input_files:
        items = []
        for i, files in enumerate(input_files):
            if isinstance(files, (str, Path)) or len(files) != 4:
                raise ValueError(f"input_files[{i}] must list 4 files (t1, t1ce, t2, flair), got {files!r}.")
            missing = [f for f in files if not Path(f).is_file()]
            if missing:
                raise FileNotFoundError(f"input_files[{i}]: file(s) not found: {missing}")
            items.append({"image": [str(f) for f in files], "source": [str(f) for f in files], "case": f"item{i}"})
        return items
    return brats_pretrain_datalist(input_dir or dataset_dir)
