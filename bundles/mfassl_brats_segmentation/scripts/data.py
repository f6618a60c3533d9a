"""Inference inputs of the ``mfassl_brats_segmentation`` bundle (standard library only).

``inference_datalist(dataset_dir)`` lists a folder the way ``configs/inference.json`` reads it: BraTS case
folders (2021 ``<case>_{t1,t1ce,t2,flair}.nii.gz`` or 2023 ``<case>-{t1n,t1c,t2w,t2f}.nii.gz``, four files per
case, stacked as channels by ``LoadImaged`` + ``EnsureChannelFirstd``) and 4D NIfTI files with the modalities
last (MONAI Label's studies layout), side by side. ``CaseNameFormatter`` names each output ``<case>_seg.nii.gz``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["MODALITY_SUFFIXES", "inference_datalist", "CaseNameFormatter"]

logger = logging.getLogger(__name__)

# File-name endings (before ``.nii[.gz]``) of the four modalities, in channel order t1, t1ce, t2, flair. (A comment,
# not an attribute docstring: the model zoo's check-docstring-first hook allows one module-level string.)
MODALITY_SUFFIXES: dict[str, tuple[str, ...]] = {
    "2021": ("_t1", "_t1ce", "_t2", "_flair"),
    "2023": ("-t1n", "-t1c", "-t2w", "-t2f"),
}

_NIFTI = (".nii.gz", ".nii")
_HELP = ("a folder of BraTS case folders (<case>_t1/_t1ce/_t2/_flair or <case>-t1n/-t1c/-t2w/-t2f NIfTI files) "
         "or of 4D NIfTI files with the modalities last")


def _stem(name: str) -> str | None:
    low = name.lower()
    for ext in _NIFTI:
        if low.endswith(ext):
            return name[: -len(ext)]
    return None


def _case_files(folder: str) -> list[str] | None:
    """The four modality files of a case folder in channel order, None when it holds none of them."""
    stems = {}
    for name in sorted(os.listdir(folder)):
        stem = _stem(name)
        if stem is not None and os.path.isfile(os.path.join(folder, name)):
            stems[stem.lower()] = os.path.join(folder, name)
    best: tuple[str, dict[str, str]] | None = None
    for naming, suffixes in MODALITY_SUFFIXES.items():
        found = {s: p for s in suffixes for st, p in stems.items() if st.endswith(s)}
        if len(found) == len(suffixes):
            return [found[s] for s in suffixes]
        if found and (best is None or len(found) > len(best[1])):
            best = (naming, found)
    if best is None:
        return None
    missing = [s for s in MODALITY_SUFFIXES[best[0]] if s not in best[1]]
    raise ValueError(f"BraTS case folder {folder} lacks the modality file(s) {missing} "
                     f"(BraTS {best[0]} naming); found {sorted(os.path.basename(p) for p in best[1].values())}.")


def inference_datalist(dataset_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    """One data dict per case of ``dataset_dir``, sorted by name.

    Args:
        dataset_dir: the folder to segment (see the module docstring).

    Returns:
        dicts with ``image`` (four paths in t1, t1ce, t2, flair order, or one 4D NIfTI path) and ``case``.

    Raises:
        ValueError: ``dataset_dir`` is unset, or a case folder lacks a modality (the message names it).
        FileNotFoundError: ``dataset_dir`` is not a folder, or holds no case.
    """
    if dataset_dir is None or str(dataset_dir).strip() in ("", "None", "null"):
        raise ValueError(f"dataset_dir is not set: pass --dataset_dir DIR, {_HELP}.")
    root = os.path.abspath(os.path.expanduser(str(dataset_dir)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset_dir {root} does not exist or is not a folder; it must be {_HELP}.")
    items: list[dict[str, Any]] = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isfile(path) and _stem(name) is not None:
            items.append({"image": path, "case": _stem(name)})
        elif os.path.isdir(path):
            files = _case_files(path)
            if files is None:
                logger.info("inference_datalist: %s holds no modality file, not a case folder", path)
                continue
            items.append({"image": files, "case": name})
    if not items:
        raise FileNotFoundError(f"dataset_dir {root} holds no case: it must be {_HELP}.")
    logger.info("inference_datalist: %d case(s) in %s", len(items), root)
    return items


class CaseNameFormatter:
    """``SaveImaged(output_name_formatter=...)``: the output is named after the case, not after its t1 file.

    ``.../BraTS2021_00000/BraTS2021_00000_t1.nii.gz`` -> subject ``BraTS2021_00000`` (so ``SaveImaged`` with
    ``output_postfix="seg"`` writes ``BraTS2021_00000_seg.nii.gz``); a 4D file keeps its own name.
    """

    def __call__(self, metadict: dict, saver: Any) -> dict[str, Any]:
        source = metadict.get("filename_or_obj", getattr(saver, "_data_index", 0)) if metadict else 0
        if isinstance(source, (list, tuple)):
            source = source[0]
        folder, name = os.path.split(str(source))
        stem, ext = _stem(name), ""
        if stem is not None:
            ext = name[len(stem):]
            for suffix in MODALITY_SUFFIXES["2021"] + MODALITY_SUFFIXES["2023"]:
                if stem.lower().endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            name = stem + ext
        return {"subject": os.path.join(folder, name), "idx": metadict.get("patch_index") if metadict else None}
