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

import csv
import hashlib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mfassl.options import as_bool
from mfassl_medical.errors import MedicalDataError, TableError

__all__ = [
    "CHEXPERT_LABELS",
    "CHEXPERT_COLUMNS",
    "UNCERTAINTY_POLICIES",
    "ROW_POLICIES",
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


_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")

ROW_POLICIES = ("raise", "skip")
"""What :func:`read_chexpert` does with a bad row: raise (default) or skip it and count it."""


def _label_value(raw: str, csv_path: Path, line: int, column: str) -> float:
    """``1``/``0``/``-1`` (also ``1.0``...) as float, blank as NaN; anything else (``nan`` included) raises."""
    s = raw.strip()
    if s == "":
        return math.nan
    v = float(s) if _NUMBER_RE.match(s) else math.nan
    if v not in (1.0, 0.0, -1.0):
        raise TableError(f"line {line}, column {column!r}: label {raw!r} is not 1, 0, -1 or blank", csv_path,
                         row=line, column=column, value=raw)
    return v


def _read_table(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line, fields)`` rows of a CSV; ``line`` is the 1-based line where the row starts."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows: list[tuple[int, list[str]]] = []
            header: list[str] | None = None
            start = 1
            for fields in reader:
                if header is None:
                    header = [c.strip() for c in fields]
                elif fields:  # an empty line is no row
                    rows.append((start, fields))
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MedicalDataError(f"cannot read the CSV: {e}", csv_path) from e
    if not header or not any(header):
        raise TableError("the CSV is empty (no header line)", csv_path, row=1)
    return header, rows


def _check_header(csv_path: Path, header: list[str], required: Sequence[str]) -> None:
    first: dict[str, int] = {}
    for j, name in enumerate(header):
        if not name:
            continue
        if name in first:
            raise TableError(f"line 1: column {name!r} appears twice (fields {first[name] + 1} and {j + 1}); "
                             f"which one holds the labels is ambiguous", csv_path, row=1, column=name)
        first[name] = j
    missing = [c for c in required if c not in first]
    if missing:
        raise TableError(f"missing column(s) {missing}; the header (line 1) has {header}", csv_path, row=1,
                         column=missing[0])


def read_chexpert(root: str | os.PathLike, split: str = "train", uncertainty: str = "zeros",
                  blank: str = "zeros", frontal_only: bool = False, labels: Sequence[str] = CHEXPERT_LABELS,
                  check_files: bool = True, masked_value: float = 0.0,
                  on_bad_row: str = "raise") -> list[dict[str, Any]]:
    """Read ``<root>/<split>.csv`` into a list of MONAI data dictionaries.

    Labels are never changed silently: a row with fewer fields than the header (a cut-off line), a
    cell that is not ``1``/``0``/``-1``/blank (``nan`` included), an unknown ``Frontal/Lateral`` value,
    a bad ``Age``, an empty ``Path`` or (with ``check_files``) a missing image is a bad row; a
    duplicated column, a missing required column or a CSV without rows is a bad table.

    Args:
        root: the dataset folder holding ``train.csv`` and ``valid.csv`` (e.g. ``.../CheXpert-v1.0-small``),
            or the CSV file itself.
        split: ``"train"`` or ``"valid"`` (the CSV's stem) when ``root`` is a folder.
        uncertainty: what ``-1`` (uncertain) becomes: ``"zeros"`` (U-Zeros), ``"ones"`` (U-Ones) or
            ``"ignore"`` (U-Ignore: masked out, ``label_mask`` 0).
        blank: what a blank cell (not mentioned) becomes: ``"zeros"`` (the usual choice) or ``"ignore"``.
        frontal_only: keep only rows with ``Frontal/Lateral == "Frontal"`` (bool, or a string such as
            ``"false"``/``"1"`` as ``python -m monai.bundle run`` hands it over).
        labels: the observation columns to read, in output order (default all 14).
        check_files: resolve every image path and treat a missing file as a bad row.
        masked_value: the label value written where ``label_mask`` is 0 (0.0 by default so that a
            loss multiplied by the mask stays finite; pass ``float("nan")`` to make them loud).
        on_bad_row: ``"raise"`` (default): the first bad row raises; ``"skip"``: bad rows are left out,
            counted and reported in one warning (the count and the first rows). A bad table always raises.

    Returns:
        one dict per image: ``image`` (absolute path str), ``label`` float32 ``(L,)``, ``label_mask``
        float32 ``(L,)`` (1 = use this label), ``patient`` (``patient00001``), ``study``, ``view``
        (``"frontal"``/``"lateral"``), ``sex``, ``age`` (float, NaN when blank), ``ap_pa``, ``path``
        (the CSV's ``Path``), and every further column under its snake_case name (``Side`` -> ``side``).

    Raises:
        TableError: (a :class:`MedicalDataError`) a bad row (``on_bad_row="raise"``) or a bad table,
            naming the CSV, the line (1-based, as an editor shows it; the header is line 1), the column
            and the value; also when no record is left.
        MedicalDataError: the CSV is missing or unreadable.
        ValueError: an unknown ``uncertainty``/``blank``/``on_bad_row`` policy.
    """
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_POLICIES}, got {uncertainty!r}.")
    if blank not in ("zeros", "ignore"):
        raise ValueError(f"blank must be 'zeros' or 'ignore', got {blank!r}.")
    if on_bad_row not in ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {ROW_POLICIES}, got {on_bad_row!r}.")
    frontal_only = bool(as_bool(frontal_only, "frontal_only"))
    check_files = bool(as_bool(check_files, "check_files"))
    root = Path(root).expanduser()
    if root.is_file():
        csv_path, root = root, root.parent
    else:
        csv_path = root / f"{split}.csv"
    if not csv_path.is_file():
        raise MedicalDataError(f"CheXpert CSV not found (expected '{split}.csv' in the dataset folder)", csv_path)
    header, rows = _read_table(csv_path)
    required = list(CHEXPERT_COLUMNS) + list(labels)
    _check_header(csv_path, header, required)
    if not rows:
        raise TableError("the CSV holds only the header line, no image rows", csv_path, row=1)
    col = {name: j for j, name in enumerate(header) if name}
    extra = [c for c in col if c not in required and c not in CHEXPERT_LABELS]

    records: list[dict[str, Any]] = []
    bad: list[TableError] = []
    n_frontal_dropped = 0
    for line, fields in rows:
        try:
            rec = _record(csv_path, root, header, col, extra, line, fields, labels, frontal_only, check_files,
                          blank, uncertainty, masked_value)
        except TableError as e:
            if on_bad_row == "raise":
                raise
            bad.append(e)
            continue
        if rec is None:
            n_frontal_dropped += 1
        else:
            records.append(rec)
    if bad:
        first = "; ".join(e.reason for e in bad[:3])
        logger.warning("%s: skipped %d bad row(s) of %d (on_bad_row='skip'); first: %s%s", csv_path, len(bad),
                       len(rows), first, " ..." if len(bad) > 3 else "")
    if not records:
        why = (f"all {len(rows)} rows are bad" if len(bad) == len(rows) else
               f"{len(bad)} bad row(s) skipped and {n_frontal_dropped} lateral row(s) dropped by frontal_only")
        raise TableError(f"no image record left: {why}", csv_path)
    logger.info("CheXpert %s: %d images of %d patients%s%s", csv_path, len(records),
                len({r["patient"] for r in records}),
                f" ({n_frontal_dropped} lateral dropped)" if frontal_only else "",
                f" ({len(bad)} bad rows skipped)" if bad else "")
    return records


def _record(csv_path: Path, root: Path, header: list[str], col: Mapping[str, int], extra: Sequence[str],
            line: int, fields: list[str], labels: Sequence[str], frontal_only: bool, check_files: bool,
            blank: str, uncertainty: str, masked_value: float) -> dict[str, Any] | None:
    """One data dict from one CSV row, None for a lateral row dropped by ``frontal_only``; raises TableError."""
    n = len(header)
    if len(fields) < n:
        last = header[len(fields) - 1] if fields else "-"
        raise TableError(f"line {line}: {len(fields)} field(s) where the header has {n}; the row is cut off "
                         f"after column {last!r} (column {header[len(fields)]!r} and later are missing)",
                         csv_path, row=line, column=header[len(fields)], value=fields[-1] if fields else "")
    if len(fields) > n and any(f.strip() for f in fields[n:]):
        raise TableError(f"line {line}: {len(fields)} fields where the header has {n} (extra values "
                         f"{[f for f in fields[n:]][:3]}); a comma inside a value must be quoted",
                         csv_path, row=line, value=fields[n])

    def cell(name: str) -> str:
        return fields[col[name]]

    view_raw = cell("Frontal/Lateral")
    view = view_raw.strip().lower()
    if view not in ("frontal", "lateral"):
        raise TableError(f"line {line}, column 'Frontal/Lateral': {view_raw!r} is neither 'Frontal' nor 'Lateral'",
                         csv_path, row=line, column="Frontal/Lateral", value=view_raw)
    if frontal_only and view != "frontal":
        return None
    rel = cell("Path").strip()
    if not rel:
        raise TableError(f"line {line}: empty 'Path'", csv_path, row=line, column="Path", value="")
    try:
        patient = chexpert_patient_id(rel)
    except MedicalDataError:
        raise TableError(f"line {line}, column 'Path': {rel!r} holds no 'patientNNNNN' folder, cannot tell the "
                         f"patient", csv_path, row=line, column="Path", value=rel) from None
    raw = np.array([_label_value(cell(c), csv_path, line, c) for c in labels], dtype=np.float32)
    age_raw = cell("Age")
    age_s = age_raw.strip()
    age = float(age_s) if _NUMBER_RE.match(age_s) else (math.nan if not age_s else -1.0)
    if age < 0:
        raise TableError(f"line {line}, column 'Age': {age_raw!r} is not a non-negative number or blank", csv_path,
                         row=line, column="Age", value=age_raw)
    resolved = _resolve(csv_path, root, rel) if check_files else None
    if check_files and resolved is None:
        raise TableError(f"line {line}: image file {rel!r} not found (looked under {root.parent} and {root})",
                         csv_path, row=line, column="Path", value=rel)
    image = str(resolved if resolved is not None else root.parent / rel)
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
    study = _STUDY_RE.search(rel)
    rec: dict[str, Any] = {
        "image": image,
        "label": lab.astype(np.float32),
        "label_mask": mask.astype(np.float32),
        "patient": patient,
        "study": study.group(1) if study else "",
        "view": view,
        "sex": cell("Sex").strip(),
        "age": age,
        "ap_pa": cell("AP/PA").strip(),
        "path": rel,
    }
    for c in extra:
        rec.setdefault(_snake(c), fields[col[c]] if col[c] < len(fields) else "")
    return rec


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
