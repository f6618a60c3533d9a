"""CheXpert reader: ``train.csv`` / ``valid.csv`` into MONAI-style data dictionaries, and the data lists the
bundles build from it (pretraining, evaluation, inference; the demo data when ``dataset_dir`` is unset).

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
import random
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mfassl.options import as_bool, as_int
from mfassl_medical.axes_file import attach_axes
from mfassl_medical.chexpert_columns import CHEXPERT_COLUMNS, CHEXPERT_LABELS
from mfassl_medical.demo_data import dataset_dir_or_demo
from mfassl_medical.errors import MedicalDataError, TableError

__all__ = [
    "CHEXPERT_LABELS",
    "CHEXPERT_COLUMNS",
    "UNCERTAINTY_POLICIES",
    "ROW_POLICIES",
    "CHEXPERT_COMPETITION_LABELS",
    "IMAGE_SUFFIXES",
    "chexpert_patient_id",
    "read_chexpert",
    "split_by_patient",
    "chexpert_pretrain_datalist",
    "chexpert_eval_data",
    "chexpert_inference_datalist",
]

logger = logging.getLogger(__name__)

#: The five observations of the CheXpert competition (the default evaluation labels on the real data).
CHEXPERT_COMPETITION_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                                 "Pleural Effusion")
#: The demo chest set marks one synthetic finding.
_DEMO_CHEXPERT_LABELS: tuple[str, ...] = ("Lung Opacity",)

#: 2D image files :func:`chexpert_inference_datalist` picks up in a folder.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")

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
    a bad ``Age``, an empty ``Path``, (with ``check_files``) a missing image, or a ``Path`` already listed
    on an earlier line (a repeated row: one image would get two records, counted twice in training and
    in the scores) is a bad row; a duplicated column, a missing required column or a CSV without rows is
    a bad table.

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
            counted and reported in one warning (the count and the first rows); of a repeated ``Path`` the
            first row is kept. A bad table always raises.

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
    first_line: dict[str, int] = {}  # image -> the line that listed it first
    for line, fields in rows:
        try:
            rec = _record(csv_path, root, header, col, extra, line, fields, labels, frontal_only, check_files,
                          blank, uncertainty, masked_value)
            if rec is not None:
                key = os.path.normpath(rec["image"])
                if key in first_line:
                    raise TableError(f"line {line}, column 'Path': {rec['path']!r} is already listed on line "
                                     f"{first_line[key]}; a repeated row would give one image two records",
                                     csv_path, row=line, column="Path", value=rec["path"])
                first_line[key] = line
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


def chexpert_pretrain_datalist(dataset_dir: str | None = None, split: str = "train", frontal_only: bool = True,
                               max_images: int | None = None, axes_file: str | None = None) -> list[dict[str, Any]]:
    """CheXpert images as ``{"image": path, "patient": ...}``; ``dataset_dir`` None = the demo data.

    Args:
        dataset_dir: the CheXpert folder holding ``train.csv``/``valid.csv`` (e.g. ``CheXpert-v1.0-small``), or
            None/"" for the synthetic demo set.
        split: ``"train"`` or ``"valid"``.
        frontal_only: drop lateral views.
        max_images: keep only the first images (quick runs).
        axes_file: precomputed axes (``python -m mfassl_medical axes DIR --kind chexpert``); each image found in
            it gets ``image_axis_precomputed`` and is not estimated in the loader. None: estimate lazily.
    """
    frontal_only = as_bool(frontal_only, "frontal_only")
    max_images = as_int(max_images, "max_images", low=0, allow_none=True)
    root = dataset_dir_or_demo(dataset_dir, "chexpert")
    records = read_chexpert(root, split=split, frontal_only=frontal_only)
    items = [{"image": r["image"], "source": r["image"], "patient": r.get("patient", "")} for r in records]
    items = items[:max_images] if max_images else items
    return attach_axes(items, axes_file, root, "chexpert")


def _subset(items: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """A seeded random subset of ``n`` items in their original order (all of them when ``n`` is unset)."""
    if not n or n >= len(items):
        return items
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in sorted(order[:n])]


def chexpert_eval_data(dataset_dir: str | None = None, labels: Sequence[str] | None = None,
                       uncertainty: str = "ignore", frontal_only: bool = True, max_train: int | None = None,
                       max_test: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Labelled CheXpert images for the evaluation: ``train.csv`` to fit the read-outs, ``valid.csv`` to test.

    Args:
        dataset_dir: the CheXpert folder (``train.csv``, ``valid.csv``); None = the demo data.
        labels: observation columns; None = the 5 competition labels (real data) or ``Lung Opacity`` (demo).
        uncertainty: ``-1`` policy, ``"ignore"`` (left out of that label's scores), ``"zeros"`` or ``"ones"``.
        frontal_only: frontal views only (the encoder was pretrained on them).
        max_train, max_test: random subsets of that size (seeded), e.g. to fit the probes on 20k images.
        seed: the subset seed.

    Returns:
        ``{"train": [...], "test": [...], "label_names": [...], "lateral": [False, ...]}``; each item has
        ``image`` (path) and ``labels`` (float32 ``(L,)``, NaN where the label is not used).
    """
    frontal_only, seed = as_bool(frontal_only, "frontal_only"), as_int(seed, "seed")
    max_train = as_int(max_train, "max_train", low=0, allow_none=True)
    max_test = as_int(max_test, "max_test", low=0, allow_none=True)
    root = dataset_dir_or_demo(dataset_dir, "chexpert")
    names = tuple(labels) if labels else (_DEMO_CHEXPERT_LABELS if not dataset_dir else CHEXPERT_COMPETITION_LABELS)
    out: dict[str, Any] = {"label_names": list(names), "lateral": [False] * len(names)}
    for key, split, n in (("train", "train", max_train), ("test", "valid", max_test)):
        recs = read_chexpert(root, split=split, uncertainty=uncertainty, frontal_only=frontal_only,
                             labels=names, masked_value=float("nan"))
        out[key] = _subset([{"image": r["image"], "labels": np.asarray(r["label"], np.float32),
                             "source": r["image"]} for r in recs], n, seed)
    return out


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def chexpert_inference_datalist(input_dir: str | None = None, input_files: Sequence[str] | None = None,
                                dataset_dir: str | None = None) -> list[dict[str, Any]]:
    """2D images to embed: ``input_files``, else every image under ``input_dir`` (recursive, sorted), else the
    validation images of ``dataset_dir`` (the demo data when unset)."""
    if input_files:
        paths = [Path(p) for p in input_files]
    elif input_dir:
        root = Path(input_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"input_dir {root} is not a folder.")
        paths = sorted(p for p in root.rglob("*") if p.is_file() and _has_suffix(p, IMAGE_SUFFIXES))
    else:
        return chexpert_pretrain_datalist(dataset_dir, split="valid")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {missing[:5]}")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {input_dir}.")
    return [{"image": str(p), "source": str(p)} for p in paths]
