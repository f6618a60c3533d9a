"""Per-face landmark prediction files: the format ``python -m mfassl_faces score`` reads (and the ``benchmark``
and ``score --source`` commands write), matching predictions to the annotated faces, and scoring them.

Coordinates are 0-based pixel ``(x, y)`` in the original image (WFLW's convention; 300W ``.pts`` files
are 1-based: ``one_based=True``, ``--one-based``, for predictions written that way).

Formats, by suffix:

- **JSON lines** (``.jsonl``, ``.ndjson``, and any suffix other than ``.json`` and ``.csv``): one
  object per face, ``{"image": "helen/testset/296814969_3.jpg", "landmarks": [[x, y], ...]}`` with
  optional ``"face"`` (the face's index among the annotated faces of that image, in annotation order)
  and ``"box"`` (``[x0, y0, x1, y1]``). ``image`` (or ``path``) is relative to the data set's image
  root (``WFLW_images/``, the 300W root), absolute, or a bare file name when no other annotated
  image has that name. The ``landmarks`` command's output is this format: its lines whose
  ``status`` is not ``ok`` are skipped and its ``face`` (the detector's rank) is not read.
- **JSON** (``.json``): a list of such objects, ``{"predictions": [...]}``, or a mapping
  ``{image: [[x, y], ...]}`` (one face) or ``{image: [[[x, y], ...], ...]}`` (several faces, e.g.
  face-alignment's ``get_landmarks_from_directory`` answer as lists).
- **CSV** (``.csv``): one face per row, ``image, x0, y0, x1, y1, ...``; an optional header row whose
  first cell is ``image`` (or ``path``) and whose second may be ``face`` (then the rows carry the face
  index there).

Matching (:func:`match_predictions`), per image: a prediction with a ``face`` index goes to that
annotated face; otherwise one annotated face and one prediction go together, and else each
annotated face takes the prediction whose box (its ``box``, else its landmarks' extent) overlaps the
face's box most (greedy by overlap; the face box is the data set's, else the ground-truth extent).
Predictions for images the ground truth does not hold are counted (``unmatched``) and left aside.

Scoring (:func:`score_predictions`): 68-point predictions against 98-point ground truth (or the
reverse) are scored on the 68 points the layouts share (:func:`~mfassl_faces.schemas.convert_landmarks`;
approximate where the layouts sample a curve differently). A face without a prediction, or whose
prediction is not finite, is refused (``missing="error"``), left out (``"skip"``) or counted as a
failure (``"fail"``: FR counts it, AUC scores it 0, the mean NME leaves it out).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mfassl.cli import json_line
from mfassl.files import read_json_lines, write_text
from mfassl_faces.errors import FaceDataError
from mfassl_faces.metrics import nme
from mfassl_faces.readers import LandmarkRecord, face_box
from mfassl_faces.report import landmark_report
from mfassl_faces.schemas import conversion_matrix, convert_landmarks, get_schema, schema_for_count
from mfassl_faces.sources.base import box_iou, landmark_extent

__all__ = ["PredictedFace", "MISSING_POLICIES", "read_predictions", "write_predictions", "image_key",
           "match_predictions", "score_predictions"]

logger = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "skip", "fail")


@dataclass
class PredictedFace:
    """One predicted face of a prediction file.

    Attributes:
        image: the image as the file names it.
        landmarks: ``(N, 2)`` 0-based pixel ``(x, y)``.
        face: index among the image's annotated faces (annotation order), or None.
        box: ``(x0, y0, x1, y1)`` or None.
        where: ``file:line`` (or ``file:key``) for messages.
    """

    image: str
    landmarks: np.ndarray
    face: int | None = None
    box: tuple[float, float, float, float] | None = None
    where: str = ""


def _points(value: Any, where: str) -> np.ndarray:
    try:
        pts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise FaceDataError(f"{where}: landmarks must be numbers ({err}).") from err
    if pts.ndim == 1 and pts.size % 2 == 0 and pts.size:
        pts = pts.reshape(-1, 2)
    if pts.ndim != 2 or pts.shape[1] != 2 or not pts.shape[0]:
        raise FaceDataError(f"{where}: landmarks must be N rows of (x, y), got shape {pts.shape}.")
    return pts


def _face_index(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < 0:
        raise FaceDataError(f"{where}: 'face' must be a non-negative integer, got {value!r}.")
    return int(value)


def _box(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        b = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise FaceDataError(f"{where}: 'box' must be [x0, y0, x1, y1] ({err}).") from err
    if len(b) != 4:
        raise FaceDataError(f"{where}: 'box' must be [x0, y0, x1, y1], got {len(b)} values.")
    return b  # type: ignore[return-value]


def _from_object(obj: Any, where: str) -> PredictedFace | None:
    if not isinstance(obj, dict):
        raise FaceDataError(f"{where}: expected an object with 'image' and 'landmarks', got {type(obj).__name__}.")
    from_landmarks_file = "status" in obj
    if from_landmarks_file and obj.get("status") != "ok":
        return None
    image = obj.get("image", obj.get("path"))
    if not isinstance(image, str) or not image:
        raise FaceDataError(f"{where}: needs 'image' (or 'path'), the image file.")
    if "landmarks" not in obj:
        raise FaceDataError(f"{where}: needs 'landmarks', a list of [x, y].")
    return PredictedFace(image, _points(obj["landmarks"], where),
                         None if from_landmarks_file else _face_index(obj.get("face"), where),
                         _box(obj.get("box"), where), where)


def _read_json(path: Path) -> list[PredictedFace]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise FaceDataError(f"not a JSON document ({err}); JSON lines need the suffix .jsonl.", path) from err
    if isinstance(doc, dict) and "predictions" in doc:
        doc = doc["predictions"]
    out: list[PredictedFace] = []
    if isinstance(doc, list):
        for k, obj in enumerate(doc):
            face = _from_object(obj, f"{path}: item {k}")
            if face is not None:
                out.append(face)
        return out
    if not isinstance(doc, dict):
        raise FaceDataError("expected a list of predictions or a mapping {image: landmarks}.", path)
    for image, value in doc.items():
        where = f"{path}: {image!r}"
        several = (isinstance(value, list) and bool(value) and isinstance(value[0], list) and bool(value[0])
                   and isinstance(value[0][0], list))
        for pts in (value if several else [value]):
            out.append(PredictedFace(str(image), _points(pts, where), None, None, where))
    return out


def _read_jsonl(path: Path) -> list[PredictedFace]:
    def refuse(k: int, err: ValueError) -> None:
        raise FaceDataError(f"line {k} is not JSON ({err}).", path) from err

    out: list[PredictedFace] = []
    for k, obj in read_json_lines(path, on_bad_line=refuse):
        face = _from_object(obj, f"{path}: line {k}")
        if face is not None:
            out.append(face)
    return out


def _read_csv(path: Path) -> list[PredictedFace]:
    out: list[PredictedFace] = []
    has_face = False
    with open(path, encoding="utf-8", newline="") as fh:
        for k, row in enumerate(csv.reader(fh), start=1):
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if k == 1 and row[0].lower() in ("image", "path"):
                has_face = len(row) > 1 and row[1].lower() == "face"
                continue
            where = f"{path}: line {k}"
            if len(row) < 3:
                raise FaceDataError(f"{where}: expected the image and its coordinates, got {len(row)} cells.")
            face = _face_index(float(row[1]), where) if has_face else None
            try:
                coords = [float(c) for c in row[2 if has_face else 1:]]
            except ValueError as err:
                raise FaceDataError(f"{where}: non-numeric coordinate ({err}).") from err
            if len(coords) % 2:
                raise FaceDataError(f"{where}: an odd number ({len(coords)}) of coordinates.")
            out.append(PredictedFace(row[0], _points(coords, where), face, None, where))
    return out


def read_predictions(path: str | os.PathLike, one_based: bool = False) -> list[PredictedFace]:
    """The faces of a prediction file (module docstring for the formats).

    Args:
        path: the file.
        one_based: the coordinates are 1-based (1 is subtracted).

    Raises:
        FaceDataError: naming the file and line (or key) of a malformed entry, and for predictions with
            different numbers of points.
    """
    p = Path(path)
    if not p.is_file():
        raise FaceDataError("prediction file does not exist.", p)
    suffix = p.suffix.lower()
    faces = _read_csv(p) if suffix == ".csv" else _read_json(p) if suffix == ".json" else _read_jsonl(p)
    if not faces:
        raise FaceDataError("no predictions in this file.", p)
    counts = {f.landmarks.shape[0] for f in faces}
    if len(counts) > 1:
        first = {f.landmarks.shape[0]: f.where for f in faces}
        listed = ", ".join(f"{n} ({w})" for n, w in first.items())
        raise FaceDataError(f"predictions with different point counts: {listed}.", p)
    if one_based:
        for f in faces:
            f.landmarks = f.landmarks - 1.0
    return faces


def write_predictions(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write prediction rows (``image``, ``face``, ``landmarks``, ...) as strict JSON lines, atomically
    (:func:`mfassl.files.write_text`); returns the path."""
    return write_text(path, "".join(json_line(row) + "\n" for row in rows))


def image_key(image: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """The image's path relative to ``root`` (posix), or the path as given when it is not under ``root``."""
    p = Path(image)
    if root is not None:
        try:
            return p.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return p.as_posix()


def _gt_box(rec: LandmarkRecord, schema: str) -> tuple[float, float, float, float]:
    return rec.box if rec.box is not None else face_box(rec.landmarks, schema)


def match_predictions(records: Sequence[LandmarkRecord], image_root: str | os.PathLike | None,
                      predictions: Sequence[PredictedFace], schema: str) -> tuple[list[PredictedFace | None], int]:
    """The prediction of each annotated face (module docstring), and the number of predictions left unmatched.

    Args:
        records: the annotated faces.
        image_root: the folder image paths are relative to.
        predictions: from :func:`read_predictions`.
        schema: the records' layout (for the face boxes).

    Returns:
        ``(per-record prediction or None, unmatched)``.

    Raises:
        FaceDataError: two predictions for one face, or a ``face`` index beyond the image's annotated faces.
    """
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_image[image_key(rec.image, image_root)].append(i)
    absolute = {str(Path(records[ix[0]].image).resolve()): key for key, ix in by_image.items()}
    names: dict[str, list[str]] = defaultdict(list)
    for key in by_image:
        names[Path(key).name].append(key)
    root = Path(image_root) if image_root is not None else None

    def lookup(image: str) -> str | None:
        if image in by_image:
            return image
        for cand in ([root / image] if root is not None else []) + [Path(image)]:
            hit = absolute.get(str(cand.resolve()))
            if hit is not None:
                return hit
        same = names.get(Path(image).name, [])
        return same[0] if len(same) == 1 else None

    grouped: dict[str, list[PredictedFace]] = defaultdict(list)
    unmatched = 0
    for pf in predictions:
        key = lookup(pf.image)
        if key is None:
            unmatched += 1
        else:
            grouped[key].append(pf)
    out: list[PredictedFace | None] = [None] * len(records)
    for key, preds in grouped.items():
        faces = by_image[key]
        indexed = [p for p in preds if p.face is not None]
        for p in indexed:
            if p.face >= len(faces):
                raise FaceDataError(f"{p.where}: face {p.face} asked for, but {key} has {len(faces)} "
                                    "annotated face(s).")
            if out[faces[p.face]] is not None:
                raise FaceDataError(f"{p.where}: a second prediction for face {p.face} of {key} "
                                    f"(the first: {out[faces[p.face]].where}).")
            out[faces[p.face]] = p
        free = [p for p in preds if p.face is None]
        open_faces = [i for i in faces if out[i] is None]
        if not free or not open_faces:
            unmatched += len(free)
            continue
        if len(free) == 1 and len(open_faces) == 1 and len(faces) == 1:
            out[open_faces[0]] = free[0]
            continue
        pairs = sorted(((box_iou(_gt_box(records[i], schema),
                                 p.box if p.box is not None else landmark_extent(p.landmarks)[0]), i, j)
                        for i in open_faces for j, p in enumerate(free)), reverse=True)
        used: set[int] = set()
        for iou, i, j in pairs:
            if iou <= 0.0:
                break
            if out[i] is None and j not in used:
                out[i] = free[j]
                used.add(j)
        unmatched += len(free) - len(used)
    return out, unmatched


def score_predictions(records: Sequence[LandmarkRecord], image_root: str | os.PathLike | None,
                      predictions: Sequence[PredictedFace], schema: str, subsets: Sequence[str] = (),
                      normalization: str = "inter-ocular", threshold: float = 0.1, missing: str = "error",
                      n_boot: int = 500, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score predictions against the annotated faces with :func:`~mfassl_faces.report.landmark_report`.

    Args:
        records: the annotated faces (their ``attributes`` hold the subset flags).
        image_root: the folder image paths are relative to.
        predictions: from :func:`read_predictions` (or a source's answers).
        schema: the records' layout.
        subsets: the subset flags to report (e.g. WFLW's six, 300W's ``common`` and ``challenging``).
        normalization: ``inter-ocular``, ``inter-pupil`` or ``box``.
        threshold: FR / AUC threshold.
        missing: ``error``, ``skip`` or ``fail`` for faces without a (finite) prediction.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``(report, per-face rows)``: the report adds ``schema`` (the layout scored), ``n_annotated``,
        ``n_missing`` and ``unmatched`` (predictions for no annotated face); each row has ``image``, ``face``
        (annotation index within the image), ``nme`` (None for a missing face), ``landmarks`` (scored layout)
        and ``subsets`` (the names of ``subsets`` the face belongs to).

    Raises:
        FaceDataError: with ``missing="error"``, naming the first faces without a prediction; point counts
            that neither match nor convert.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}.")
    gt_schema = get_schema(schema)
    matched, unmatched = match_predictions(records, image_root, predictions, gt_schema.name)
    n_pred = next((p.landmarks.shape[0] for p in predictions), gt_schema.n_points)
    scored = gt_schema
    if n_pred != gt_schema.n_points:
        try:
            pred_schema = schema_for_count(n_pred)
            scored = get_schema("ibug68")
            conversion_matrix(gt_schema, scored)
            conversion_matrix(pred_schema, scored)
        except ValueError as err:
            raise FaceDataError(f"{n_pred}-point predictions cannot be scored against {gt_schema.n_points}-point "
                                f"ground truth ({err}).") from err
        logger.warning("%d-point predictions against %d-point ground truth: scored on the 68 points the layouts "
                       "share (an approximate correspondence).", n_pred, gt_schema.n_points)
    else:
        pred_schema = gt_schema
    keys, face_no, seen = [], [], defaultdict(int)
    for rec in records:
        key = image_key(rec.image, image_root)
        keys.append(key)
        face_no.append(seen[key])
        seen[key] += 1
    absent = [i for i, p in enumerate(matched) if p is None or not np.all(np.isfinite(p.landmarks))]
    if absent and missing == "error":
        names = ", ".join(f"{keys[i]} (face {face_no[i]})" for i in absent[:5])
        raise FaceDataError(f"{len(absent)} of {len(records)} annotated faces have no finite prediction "
                            f"(first: {names}); --missing skip leaves them out, --missing fail counts them as failures.")
    absent_set = set(absent)
    keep = [i for i in range(len(records)) if missing == "fail" or i not in absent_set]
    if not keep:
        raise FaceDataError(f"none of the {len(records)} annotated faces has a finite prediction.")
    errors = np.full(len(keep), np.inf)
    rows = []
    for k, i in enumerate(keep):
        target = convert_landmarks(records[i].landmarks, gt_schema, scored)
        row: dict[str, Any] = {"image": keys[i], "face": face_no[i], "nme": None, "landmarks": None,
                               "subsets": [n for n in subsets if records[i].attributes.get(n, 0)]}
        if i not in absent_set:
            pred = convert_landmarks(matched[i].landmarks, pred_schema, scored)
            errors[k] = float(nme(pred[None], target[None], scored, normalization)[0])
            row.update(nme=errors[k], landmarks=np.round(pred, 4).tolist())
        rows.append(row)
    names_ = list(subsets)
    flags = np.array([[float(records[i].attributes.get(n, 0)) for n in names_] for i in keep]).reshape(len(keep), -1)
    report = landmark_report(errors, flags, names_, threshold, normalization, n_boot, seed)
    report.update(schema=scored.name, n_annotated=len(records), n_missing=len(absent), unmatched=unmatched,
                  missing=missing)
    return report, rows
