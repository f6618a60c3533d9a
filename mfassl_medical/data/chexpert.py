"""CheXpert reader: ``train.csv`` / ``valid.csv`` into MONAI-style data dictionaries.

Layout (the public ``CheXpert-v1.0`` and ``CheXpert-v1.0-small`` releases)::

    <parent>/CheXpert-v1.0-small/
        train.csv  valid.csv
        train/patient00001/study1/view1_frontal.jpg
        valid/patient64541/study1/view1_frontal.jpg

The ``Path`` column is relative to ``<parent>`` (it starts with ``CheXpert-v1.0-small/``).
Columns: ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14 observations of
:data:`CHEXPERT_LABELS`, each ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) or blank
(not mentioned). Further columns (e.g. ``Side`` in the demo data) are passed through.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mfassl_medical.errors import MedicalDataError

__all__ = [
    "CHEXPERT_LABELS",
    "CHEXPERT_COLUMNS",
    "UNCERTAINTY_POLICIES",
    "chexpert_patient_id",
    "read_chexpert",
    "split_by_patient",
]

logger = logging.getLogger(__name__)

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 observations, in the column order of the released CSVs."""

CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
"""The non-label columns every CheXpert CSV has."""

UNCERTAINTY_POLICIES = ("zeros", "ones", "ignore")

_PATIENT_RE = re.compile(r"(patient\d+)")
_STUDY_RE = re.compile(r"(study\d+)")


def chexpert_patient_id(path: str) -> str:
    """``patient00001`` from ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``.

    Raises:
        MedicalDataError: when the path holds no ``patientNNNNN`` component.
    """
    m = _PATIENT_RE.search(str(path).replace("\\", "/"))
    if m is None:
        raise MedicalDataError("no 'patientNNNNN' folder in the image path, cannot tell the patient", path)
    return m.group(1)


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _resolve(csv_path: Path, root: Path, rel: str) -> Path | None:
    """Find the file a CSV ``Path`` names: relative to the root's parent, the root, or with its
    first component (the dataset folder name, which users often rename) replaced by the root."""
    rel_p = Path(str(rel).replace("\\", "/"))
    if rel_p.is_absolute():
        return rel_p if rel_p.exists() else None
    candidates = [root.parent / rel_p, root / rel_p, csv_path.parent.parent / rel_p]
    if len(rel_p.parts) > 1:
        candidates.append(root / Path(*rel_p.parts[1:]))
    for c in candidates:
        if c.exists():
            return c
    return None


def _label_value(raw: Any, csv_path: Path, row: int, column: str) -> float:
    """``1``/``0``/``-1`` as float, blank as NaN; anything else raises."""
    if raw is None:
        return math.nan
    if isinstance(raw, str):
        s = raw.strip()
        if s == "":
            return math.nan
        try:
            raw = float(s)
        except ValueError:
            raise MedicalDataError(f"row {row}, column {column!r}: label {raw!r} is not 1, 0, -1 or blank",
                                   csv_path) from None
    v = float(raw)
    if math.isnan(v):
        return v
    if v not in (1.0, 0.0, -1.0):
        raise MedicalDataError(f"row {row}, column {column!r}: label {raw!r} is not 1, 0, -1 or blank", csv_path)
    return v


def read_chexpert(root: str | os.PathLike, split: str = "train", uncertainty: str = "zeros",
                  blank: str = "zeros", frontal_only: bool = False, labels: Sequence[str] = CHEXPERT_LABELS,
                  check_files: bool = True, masked_value: float = 0.0) -> list[dict[str, Any]]:
    """Read ``<root>/<split>.csv`` into a list of MONAI data dictionaries.

    Args:
        root: the dataset folder holding ``train.csv`` and ``valid.csv`` (e.g. ``.../CheXpert-v1.0-small``),
            or the CSV file itself.
        split: ``"train"`` or ``"valid"`` (the CSV's stem) when ``root`` is a folder.
        uncertainty: what ``-1`` (uncertain) becomes: ``"zeros"`` (U-Zeros), ``"ones"`` (U-Ones) or
            ``"ignore"`` (U-Ignore: masked out, ``label_mask`` 0).
        blank: what a blank cell (not mentioned) becomes: ``"zeros"`` (the usual choice) or ``"ignore"``.
        frontal_only: keep only rows with ``Frontal/Lateral == "Frontal"``.
        labels: the observation columns to read, in output order (default all 14).
        check_files: resolve every image path and raise when a file is missing.
        masked_value: the label value written where ``label_mask`` is 0 (0.0 by default so that a
            loss multiplied by the mask stays finite; pass ``float("nan")`` to make them loud).

    Returns:
        one dict per image: ``image`` (absolute path str), ``label`` float32 ``(L,)``, ``label_mask``
        float32 ``(L,)`` (1 = use this label), ``patient`` (``patient00001``), ``study``, ``view``
        (``"frontal"``/``"lateral"``), ``sex``, ``age`` (float, NaN when blank), ``ap_pa``, ``path``
        (the CSV's ``Path``), and every further column under its snake_case name (``Side`` -> ``side``).

    Raises:
        MedicalDataError: the CSV is missing or unreadable, lacks a column, has a label outside
            1/0/-1/blank, or (with ``check_files``) names an image that does not exist; the message
            names the CSV, the row and the file.
        ValueError: an unknown ``uncertainty``/``blank`` policy.
    """
    import pandas as pd

    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_POLICIES}, got {uncertainty!r}.")
    if blank not in ("zeros", "ignore"):
        raise ValueError(f"blank must be 'zeros' or 'ignore', got {blank!r}.")
    root = Path(root).expanduser()
    if root.is_file():
        csv_path, root = root, root.parent
    else:
        csv_path = root / f"{split}.csv"
    if not csv_path.is_file():
        raise MedicalDataError(f"CheXpert CSV not found (expected '{split}.csv' in the dataset folder)", csv_path)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several types for broken files
        raise MedicalDataError(f"cannot read the CSV: {e}", csv_path) from e
    df.columns = [c.strip() for c in df.columns]
    required = list(CHEXPERT_COLUMNS) + list(labels)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise MedicalDataError(f"missing column(s) {missing}; found {list(df.columns)}", csv_path)
    extra = [c for c in df.columns if c not in required and c not in CHEXPERT_LABELS]

    records: list[dict[str, Any]] = []
    n_frontal_dropped = 0
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2  # 1-based, after the header
        view = str(row["Frontal/Lateral"]).strip().lower()
        if frontal_only and view != "frontal":
            n_frontal_dropped += 1
            continue
        rel = str(row["Path"]).strip()
        if not rel:
            raise MedicalDataError(f"row {line}: empty 'Path'", csv_path)
        resolved = _resolve(csv_path, root, rel) if check_files else None
        if check_files and resolved is None:
            raise MedicalDataError(f"row {line}: image file {rel!r} not found (looked under {root.parent} "
                                   f"and {root})", csv_path)
        image = str(resolved if resolved is not None else root.parent / rel)
        raw = np.array([_label_value(row[c], csv_path, line, c) for c in labels], dtype=np.float32)
        mask = np.ones_like(raw)
        lab = raw.copy()
        blank_cells = np.isnan(raw)
        uncertain = raw == -1
        if blank == "zeros":
            lab[blank_cells] = 0.0
        else:
            mask[blank_cells] = 0.0
        if uncertainty == "zeros":
            lab[uncertain] = 0.0
        elif uncertainty == "ones":
            lab[uncertain] = 1.0
        else:
            mask[uncertain] = 0.0
        lab[mask == 0] = masked_value
        age_s = str(row["Age"]).strip()
        try:
            age = float(age_s) if age_s else math.nan
        except ValueError:
            raise MedicalDataError(f"row {line}: Age {age_s!r} is not a number", csv_path) from None
        study = _STUDY_RE.search(rel)
        rec: dict[str, Any] = {
            "image": image,
            "label": lab.astype(np.float32),
            "label_mask": mask.astype(np.float32),
            "patient": chexpert_patient_id(rel),
            "study": study.group(1) if study else "",
            "view": view,
            "sex": str(row["Sex"]).strip(),
            "age": age,
            "ap_pa": str(row["AP/PA"]).strip(),
            "path": rel,
        }
        for c in extra:
            rec.setdefault(_snake(c), row[c])
        records.append(rec)
    logger.info("CheXpert %s: %d images of %d patients%s", csv_path, len(records),
                len({r["patient"] for r in records}),
                f" ({n_frontal_dropped} lateral dropped)" if frontal_only else "")
    return records


def _unit_hash(key: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_by_patient(records: Iterable[Mapping[str, Any]], fractions: Mapping[str, float] | None = None,
                     seed: int = 0, patient_key: str = "patient") -> dict[str, list[dict[str, Any]]]:
    """Split records so that all images of a patient land in the same part.

    Patients are ordered by a seeded hash of their id, then cut at the cumulative fractions, so a
    patient's part does not change when other patients are added (stable across dataset versions).

    Args:
        records: data dicts with a ``patient_key`` entry (CheXpert ``patient``, BraTS ``case``).
        fractions: part name -> share, summing to 1 (default ``{"train": 0.8, "val": 0.1, "test": 0.1}``).
        seed: changes the assignment.
        patient_key: the dict key holding the patient id.

    Returns:
        part name -> list of records (input order kept inside each part).
    """
    fractions = dict(fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"fractions must be non-negative with a positive sum, got {fractions}.")
    records = list(records)
    patients = sorted({str(r[patient_key]) for r in records}, key=lambda p: _unit_hash(p, seed))
    bounds, acc = [], 0.0
    for name, share in fractions.items():
        acc += share / total
        bounds.append((name, acc))
    part_of: dict[str, str] = {}
    n = len(patients)
    start = 0
    for j, (name, upto) in enumerate(bounds):
        stop = n if j == len(bounds) - 1 else int(round(upto * n))
        for p in patients[start:stop]:
            part_of[p] = name
        start = max(start, stop)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in fractions}
    for r in records:
        out[part_of[str(r[patient_key])]].append(dict(r))
    return out
