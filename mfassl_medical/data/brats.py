"""BraTS reader (2021 and 2023 naming) and the label map to tumour sub-region channels.

Layouts::

    <root>/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz        (2021)
    <root>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz  (2023)

Labels: 2021 uses 1 = necrotic core (NCR), 2 = oedema (ED), 4 = enhancing tumour (ET);
2023 uses 1 = NCR, 2 = ED, 3 = ET. The evaluated regions are ET, tumour core TC = NCR + ET and
whole tumour WT = NCR + ED + ET.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from mfassl_medical.errors import MedicalDataError

__all__ = [
    "BRATS_MODALITIES",
    "BRATS_REGIONS",
    "find_brats_cases",
    "brats_case_files",
    "ConvertBraTSLabels",
    "ConvertBraTSLabelsd",
    "ConvertBraTSLabelsD",
    "ConvertBraTSLabelsDict",
]

logger = logging.getLogger(__name__)

BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""The fixed channel order of ``image`` in the data dicts."""

BRATS_REGIONS: tuple[str, ...] = ("TC", "WT", "ET")
"""Default channel order of :class:`ConvertBraTSLabels` (MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` order)."""

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
        MedicalDataError: two files claim the same modality.
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
            raise MedicalDataError(f"two files for modality {mod!r}: {Path(found[mod]).name} and {f.name}", case_dir)
        found[mod] = str(f)
    return found


def _naming(case_dir: Path) -> str:
    return "2023" if re.match(r"^BraTS-[A-Z]+-\d+", case_dir.name) else "2021"


def find_brats_cases(root: str | os.PathLike, require_seg: bool = False, on_incomplete: str = "raise",
                     modalities: Sequence[str] = BRATS_MODALITIES) -> list[dict[str, Any]]:
    """List the cases of a BraTS folder as MONAI data dictionaries.

    Args:
        root: folder whose sub-folders are cases (one folder per case, sorted by name).
        require_seg: a case without a ``seg`` file is incomplete.
        on_incomplete: ``"raise"`` (default) or ``"skip"`` (logged with a warning) for a case folder
            that lacks one of ``modalities``.
        modalities: the channel order of ``image`` (default ``t1, t1ce, t2, flair``).

    Returns:
        one dict per case: ``image`` = list of paths in ``modalities`` order (load with
        ``LoadImaged`` + ``EnsureChannelFirstd`` to a ``(4, X, Y, Z)`` tensor), ``label`` = the seg
        path when there is one, ``case`` (the folder name), ``patient`` (same as ``case``, for
        :func:`~mfassl_medical.data.chexpert.split_by_patient`) and ``naming`` (``"2021"``/``"2023"``).

    Raises:
        MedicalDataError: ``root`` is not a folder, holds no case, or a case is incomplete.
    """
    if on_incomplete not in ("raise", "skip"):
        raise ValueError(f"on_incomplete must be 'raise' or 'skip', got {on_incomplete!r}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MedicalDataError("BraTS root is not a folder", root)
    cases: list[dict[str, Any]] = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = brats_case_files(case_dir)
        if not files:
            continue
        need = list(modalities) + (["seg"] if require_seg else [])
        missing = [m for m in need if m not in files]
        if missing:
            err = MedicalDataError(f"case is missing modality file(s) {missing}; found {sorted(files)}", case_dir)
            if on_incomplete == "raise":
                raise err
            logger.warning("skipping incomplete BraTS case: %s", err)
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
    if not cases:
        raise MedicalDataError("no BraTS case folders (with *_t1/_t1ce/_t2/_flair or -t1n/-t1c/-t2w/-t2f "
                               "NIfTI files) found", root)
    logger.info("BraTS %s: %d cases", root, len(cases))
    return cases


class ConvertBraTSLabels(Transform):
    """BraTS label map -> binary region channels, for 2021 (ET = 4) and 2023 (ET = 3) labels alike.

    ``ET = {3, 4}``, ``TC = {1, 3, 4}``, ``WT = {1, 2, 3, 4}``: 2021 maps never contain 3 and 2023
    maps never contain 4, so one rule serves both. ``version`` pins one release when wanted.

    Args:
        regions: output channel order, names from ``"TC"``, ``"WT"``, ``"ET"`` (default TC, WT, ET,
            the order of MONAI's ``ConvertToMultiChannelBasedOnBratsClasses``).
        version: ``"auto"`` (default), ``"2021"`` or ``"2023"``.

    Input ``(1, X, Y, Z)`` or ``(X, Y, Z)`` integer labels; output ``(len(regions), X, Y, Z)`` of the
    input's type (MetaTensor meta kept), values 0/1.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: Sequence[str] = BRATS_REGIONS, version: str = "auto") -> None:
        bad = [r for r in regions if r not in ("TC", "WT", "ET")]
        if bad:
            raise ValueError(f"unknown region(s) {bad}; use 'TC', 'WT', 'ET'.")
        if version not in ("auto", "2021", "2023"):
            raise ValueError(f"version must be 'auto', '2021' or '2023', got {version!r}.")
        self.regions = tuple(regions)
        self.version = version

    def _sets(self) -> dict[str, tuple[int, ...]]:
        et = {"auto": (3, 4), "2021": (4,), "2023": (3,)}[self.version]
        return {"ET": et, "TC": (1, *et), "WT": (1, 2, *et)}

    def __call__(self, img: Any) -> Any:
        t = convert_to_tensor(img, track_meta=False)
        if t.ndim >= 1 and t.shape[0] == 1 and t.ndim in (3, 4):
            t = t[0]
        t = torch.round(t).to(torch.int64)
        sets = self._sets()
        chans = [torch.isin(t, torch.tensor(sets[r])) for r in self.regions]
        out = torch.stack(chans, dim=0).to(torch.float32)
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class ConvertBraTSLabelsd(MapTransform):
    """Dictionary wrapper of :class:`ConvertBraTSLabels`.

    Args:
        keys: keys of the label maps (e.g. ``"label"``).
        regions: see :class:`ConvertBraTSLabels`.
        version: see :class:`ConvertBraTSLabels`.
        allow_missing_keys: do not raise when a key is absent (cases without ``seg``).
    """

    def __init__(self, keys: KeysCollection, regions: Sequence[str] = BRATS_REGIONS, version: str = "auto",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ConvertBraTSLabels(regions, version)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


ConvertBraTSLabelsD = ConvertBraTSLabelsDict = ConvertBraTSLabelsd
