"""Readers for CelebA / CelebA-HQ attributes, WFLW annotations and 300W/iBUG ``.pts`` folders, and
one torch dataset for landmark data.

Layouts (as distributed):

- CelebA ``list_attr_celeba.txt`` and CelebA-HQ ``CelebAMask-HQ-attribute-anno.txt``: line 1 the
  number of images, line 2 the 40 attribute names, then ``<file> v1 ... v40`` with values ``1`` / ``-1``.
- CelebA ``list_eval_partition.txt``: ``<file> <0|1|2>`` (train / val / test).
- CelebA ``identity_CelebA.txt``: ``<file> <identity>``.
- CelebA-HQ ``CelebA-HQ-to-CelebA-mapping.txt``: a header line, then ``idx orig_idx orig_file``
  (CelebA-HQ image ``<idx>.jpg`` is CelebA's ``orig_file``).
- WFLW ``list_98pt_rect_attr_{train,test}.txt``: per line 196 landmark coordinates ``x0 y0 ... x97 y97``,
  4 box values ``x_min y_min x_max y_max``, 6 attribute flags (pose, expression, illumination,
  make-up, occlusion, blur) and the image path relative to ``WFLW_images/``.
- 300W/iBUG: ``<name>.<png|jpg>`` beside ``<name>.pts``.
- the landmarks file of ``python -m mfassl_faces landmarks`` (:mod:`mfassl_faces.landmark_cache`): its
  ``ok`` lines (:func:`landmark_records`).
- CelebA ``list_landmarks_align_celeba.txt`` (and ``list_landmarks_celeba.txt`` for the in-the-wild
  images): line 1 the number of images, line 2 the ten column names ``lefteye_x lefteye_y righteye_x
  righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y``, then ``<file>`` and
  ten integers per line (pixel coordinates; "left" is the image-left, as in the 5-point schema).

Every parse error raises :class:`~mfassl_faces.errors.FaceDataError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mfassl_faces.axis import axis_from_landmarks
from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import IMAGE_SUFFIXES, read_image, read_pts
from mfassl_faces.landmark_cache import compute_landmarks, is_landmarks_file, list_images, read_landmarks_file
from mfassl_faces.schemas import LandmarkSchema, flip_landmarks, get_schema, schema_for_count

__all__ = [
    "WFLW_ATTRIBUTES",
    "SPLITS",
    "LandmarkRecord",
    "read_celeba_attributes",
    "read_celeba_partition",
    "read_celeba_identities",
    "read_celebahq_mapping",
    "identity_split",
    "CelebAHQDataset",
    "read_wflw_annotations",
    "read_300w_folder",
    "read_celeba_landmarks",
    "landmark_records",
    "collect_landmark_records",
    "face_box",
    "LandmarkDataset",
    "crop_matrix",
]

logger = logging.getLogger(__name__)

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")
SPLITS = ("train", "val", "test")


def _lines(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FaceDataError("file does not exist.", p)
    try:
        return p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise FaceDataError(f"not a text file ({err}).", p) from err


# ---------------------------------------------------------------------------------------------- CelebA
def read_celeba_attributes(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """The 40-attribute file (CelebA or CelebA-HQ format).

    Returns:
        ``(names, table)``: the attribute names and ``{file: (40,) uint8 array of 0/1}``.
    """
    lines = [ln for ln in _lines(path) if ln.strip()]
    if len(lines) < 2:
        raise FaceDataError("an attribute file needs a count line and a names line.", path)
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError) as err:
        raise FaceDataError(f"line 1 must be the number of images, got {lines[0]!r}.", path) from err
    names = lines[1].split()
    table: dict[str, np.ndarray] = {}
    for k, ln in enumerate(lines[2:], start=3):
        parts = ln.split()
        if len(parts) != len(names) + 1:
            raise FaceDataError(f"line {k}: expected a file name and {len(names)} values, got {len(parts)} fields.", path)
        try:
            vals = np.array([int(v) for v in parts[1:]])
        except ValueError as err:
            raise FaceDataError(f"line {k}: attribute values must be 1 or -1 ({err}).", path) from err
        if not np.all(np.isin(vals, (-1, 0, 1))):
            raise FaceDataError(f"line {k}: attribute values must be 1 or -1.", path)
        table[parts[0]] = (vals > 0).astype(np.uint8)
    if count != len(table):
        logger.warning("%s: header says %d images, the file lists %d.", path, count, len(table))
    return names, table


def _two_columns(path: str | os.PathLike, what: str) -> dict[str, str]:
    out = {}
    for k, ln in enumerate(_lines(path), start=1):
        parts = ln.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise FaceDataError(f"line {k}: expected '<file> <{what}>', got {ln!r}.", path)
        out[parts[0]] = parts[1]
    return out


def read_celeba_partition(path: str | os.PathLike) -> dict[str, str]:
    """``list_eval_partition.txt`` as ``{file: "train" | "val" | "test"}``."""
    raw = _two_columns(path, "0|1|2")
    try:
        return {f: SPLITS[int(v)] for f, v in raw.items()}
    except (ValueError, IndexError) as err:
        raise FaceDataError(f"partition values must be 0, 1 or 2 ({err}).", path) from err


def read_celeba_identities(path: str | os.PathLike) -> dict[str, str]:
    """``identity_CelebA.txt`` as ``{file: identity}``."""
    return _two_columns(path, "identity")


def read_celebahq_mapping(path: str | os.PathLike) -> dict[str, str]:
    """``CelebA-HQ-to-CelebA-mapping.txt`` as ``{"<idx>.jpg": "<CelebA file>"}``."""
    out = {}
    for k, ln in enumerate(_lines(path), start=1):
        parts = ln.split()
        if not parts or k == 1 and not parts[0].isdigit():
            continue
        if len(parts) != 3:
            raise FaceDataError(f"line {k}: expected 'idx orig_idx orig_file', got {ln!r}.", path)
        out[f"{int(parts[0])}.jpg"] = parts[2]
    return out


def identity_split(identities: dict[str, str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 0) -> dict[str, str]:
    """Assign files to train/val/test so that no identity appears in two splits.

    Each identity goes to a split by a seeded hash of its label (stable across runs and machines),
    so the split fractions hold over identities, approximately over files.

    Returns:
        ``{file: split}``.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}.")
    edges = np.cumsum(f / f.sum())
    out = {}
    for file, ident in identities.items():
        h = hashlib.sha256(f"{seed}:{ident}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2.0**64
        out[file] = SPLITS[int(np.searchsorted(edges, u, side="right").clip(max=2))]
    return out


class CelebAHQDataset(Dataset):
    """CelebA(-HQ) images with their 40 binary attributes.

    Args:
        image_dir: folder of the images (``CelebA-HQ-img/`` or ``img_align_celeba/``).
        attribute_file: the attribute file (either format).
        split: ``train``, ``val``, ``test`` or None (all).
        partition_file: CelebA's ``list_eval_partition.txt`` (the official split).
        identity_file: ``identity_CelebA.txt``; when given (and no partition file), an identity-aware split.
        mapping_file: CelebA-HQ -> CelebA mapping, to look up CelebA-HQ files in the two files above.
        size: output side in pixels (images are resized to ``size x size``).
        fractions: train/val/test shares of the identity-aware split.
        seed: seed of the identity-aware split.

    Items: ``{"image": (3, size, size) float in [0, 1], "attributes": (40,) float, "path": str}``.
    """

    def __init__(self, image_dir: str | os.PathLike, attribute_file: str | os.PathLike, split: str | None = None,
                 partition_file: str | os.PathLike | None = None, identity_file: str | os.PathLike | None = None,
                 mapping_file: str | os.PathLike | None = None, size: int = 64,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> None:
        self.image_dir = Path(image_dir)
        self.names, table = read_celeba_attributes(attribute_file)
        self.size = int(size)
        mapping = read_celebahq_mapping(mapping_file) if mapping_file else {}
        files = sorted(table, key=lambda s: (len(s), s))
        self.split_source = "all"
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}.")
            if partition_file is not None:
                splits, self.split_source = read_celeba_partition(partition_file), "official"
            elif identity_file is not None:
                ids = read_celeba_identities(identity_file)
                ids = {f: ids[mapping.get(f, f)] for f in files if mapping.get(f, f) in ids}
                splits, self.split_source = identity_split(ids, fractions, seed), "identity"
            else:
                raise ValueError("a split needs partition_file (official) or identity_file (identity-aware).")
            missing = [f for f in files if mapping.get(f, f) not in splits and f not in splits]
            if missing:
                logger.warning("%d attribute rows have no split entry and are left out (first: %s).", len(missing), missing[0])
            files = [f for f in files if splits.get(f, splits.get(mapping.get(f, f))) == split]
        self.files = files
        self.attributes = np.stack([table[f] for f in files]) if files else np.zeros((0, len(self.names)), np.uint8)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import cv2

        path = self.image_dir / self.files[i]
        img = cv2.resize(read_image(path), (self.size, self.size), interpolation=cv2.INTER_AREA)
        return {"image": torch.from_numpy(img).permute(2, 0, 1).float() / 255.0,
                "attributes": torch.from_numpy(self.attributes[i].astype(np.float32)), "path": str(path)}


# ---------------------------------------------------------------------------------------------- landmarks
@dataclass
class LandmarkRecord:
    """One annotated face.

    Attributes:
        image: the image file.
        landmarks: ``(N, 2)`` pixel ``(x, y)``.
        box: ``(x_min, y_min, x_max, y_max)`` face box, or None (:func:`face_box` of the landmarks is used).
        attributes: named 0/1 flags (WFLW's six subsets), possibly empty.
        schema: the landmarks' layout when it differs from the dataset's (None: the dataset's).
        origin: where the landmarks come from: ``annotation``, ``landmarks_file`` or ``detector``.
    """

    image: Path
    landmarks: np.ndarray
    box: tuple[float, float, float, float] | None = None
    attributes: dict[str, int] = field(default_factory=dict)
    schema: str | None = None
    origin: str = "annotation"


def read_wflw_annotations(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[LandmarkRecord]:
    """A WFLW ``list_98pt_rect_attr_{train,test}.txt`` file.

    Args:
        path: the annotation file.
        image_root: folder the image paths are relative to (``WFLW_images/``); default the file's folder.

    Returns:
        One :class:`LandmarkRecord` per line (98 landmarks, box, the six attribute flags).

    Raises:
        FaceDataError: naming the file and line: a wrong field count, a non-numeric or non-finite landmark or
            box value, a box with ``x_max < x_min`` or ``y_max < y_min``, an attribute flag other than 0 or 1.
    """
    root = Path(image_root) if image_root is not None else Path(path).parent
    out = []
    for k, ln in enumerate(_lines(path), start=1):
        parts = ln.split()
        if not parts:
            continue
        if len(parts) != 196 + 4 + 6 + 1:
            raise FaceDataError(f"line {k}: a WFLW line has 207 fields (196 coordinates, 4 box values, "
                                f"6 flags, image path), got {len(parts)}.", path)
        try:
            nums = np.array([float(v) for v in parts[:206]])
        except ValueError as err:
            raise FaceDataError(f"line {k}: non-numeric value ({err}).", path) from err
        bad = np.flatnonzero(~np.isfinite(nums[:200]))
        if bad.size:
            j = int(bad[0])
            what = f"landmark {j // 2} {'xy'[j % 2]}" if j < 196 else f"box value {j - 196 + 1} of 4"
            raise FaceDataError(f"line {k}: non-finite value {parts[j]!r} ({what}; {bad.size} non-finite in all).",
                                path)
        x_min, y_min, x_max, y_max = nums[196:200]
        if x_max < x_min or y_max < y_min:
            raise FaceDataError(f"line {k}: the box (x_min y_min x_max y_max) = {' '.join(parts[196:200])} has "
                                f"{'x_max < x_min' if x_max < x_min else 'y_max < y_min'}.", path)
        if not np.all(np.isin(nums[200:206], (0.0, 1.0))):
            raise FaceDataError(f"line {k}: the six attribute flags ({', '.join(WFLW_ATTRIBUTES)}) must each be 0 or 1, "
                                f"got {' '.join(parts[200:206])}.", path)
        flags = nums[200:206].astype(int)
        out.append(LandmarkRecord(root / parts[206], nums[:196].reshape(98, 2), tuple(float(v) for v in nums[196:200]),
                                  dict(zip(WFLW_ATTRIBUTES, (int(f) for f in flags)))))
    return out


def read_300w_folder(folder: str | os.PathLike, schema: str | LandmarkSchema = "ibug68") -> list[LandmarkRecord]:
    """Every ``<name>.pts`` with an image beside it in ``folder`` (recursively), sorted by path.

    Raises:
        FaceDataError: a ``.pts`` file with a wrong landmark count (names the file).
    """
    s = get_schema(schema)
    out = []
    for pts_path in sorted(Path(folder).rglob("*.pts")):
        image = next((pts_path.with_suffix(sfx) for sfx in IMAGE_SUFFIXES if pts_path.with_suffix(sfx).is_file()), None)
        if image is None:
            logger.warning("%s has no image beside it; skipped.", pts_path)
            continue
        pts = read_pts(pts_path)
        if pts.shape != (s.n_points, 2):
            raise FaceDataError(f"expected {s.n_points} landmarks ({s.name}), got {pts.shape[0]}.", pts_path)
        out.append(LandmarkRecord(image, pts))
    return out


CELEBA_LANDMARK_COLUMNS = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                           "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")


def read_celeba_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """CelebA's ``list_landmarks_align_celeba.txt`` (or ``list_landmarks_celeba.txt``).

    Returns:
        ``{file: (5, 2) float64}`` pixel ``(x, y)`` in the 5-point order (image-left eye, image-right
        eye, nose, image-left and image-right mouth corner).

    Raises:
        FaceDataError: naming the file and line for a wrong header, field count or a non-numeric value.
    """
    lines = _lines(path)
    body = [(k, ln) for k, ln in enumerate(lines, start=1) if ln.strip()]
    if len(body) < 2:
        raise FaceDataError("a CelebA landmark file needs a count line and a column-names line.", path)
    try:
        count = int(body[0][1].split()[0])
    except (ValueError, IndexError) as err:
        raise FaceDataError(f"line {body[0][0]} must be the number of images, got {body[0][1]!r}.", path) from err
    names = tuple(body[1][1].split())
    if names != CELEBA_LANDMARK_COLUMNS:
        raise FaceDataError(f"line {body[1][0]}: expected the columns {' '.join(CELEBA_LANDMARK_COLUMNS)}, "
                            f"got {' '.join(names)!r}.", path)
    out: dict[str, np.ndarray] = {}
    for k, ln in body[2:]:
        parts = ln.split()
        if len(parts) != 11:
            raise FaceDataError(f"line {k}: expected a file name and 10 coordinates, got {len(parts)} fields.", path)
        try:
            pts = np.array([float(v) for v in parts[1:]], dtype=np.float64).reshape(5, 2)
        except ValueError as err:
            raise FaceDataError(f"line {k}: non-numeric coordinate ({err}).", path) from err
        if not np.all(np.isfinite(pts)):
            raise FaceDataError(f"line {k}: non-finite coordinate.", path)
        if parts[0] in out:
            raise FaceDataError(f"line {k}: {parts[0]} is listed twice.", path)
        out[parts[0]] = pts
    if count != len(out):
        logger.warning("%s: header says %d images, the file lists %d.", path, count, len(out))
    return out


def face_box(landmarks: np.ndarray, schema: str | LandmarkSchema) -> tuple[float, float, float, float]:
    """A face box ``(x0, y0, x1, y1)`` from landmarks: their extent, or for the 5-point layout (eyes, nose,
    mouth corners: an inner-face extent) a square of 2.2 times the larger of the inter-ocular and the
    eye-to-mouth distance around their centre, so crops hold the whole face like the other layouts'."""
    s = get_schema(schema)
    pts = s.check(landmarks)
    if s.n_points == 5:
        eyes, mouth = pts[:2].mean(axis=0), pts[3:].mean(axis=0)
        side = 2.2 * max(float(np.linalg.norm(pts[0] - pts[1])), float(np.linalg.norm(mouth - eyes)), 1.0)
        cx, cy = (eyes + mouth) / 2.0
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1))


def _cached_record(image: Path, line: dict[str, Any]) -> LandmarkRecord:
    """The :class:`LandmarkRecord` of an ``ok`` line of a landmarks file."""
    box = line.get("box")
    return LandmarkRecord(image, np.asarray(line["landmarks"], dtype=np.float64),
                          None if box is None else tuple(float(v) for v in box),
                          schema=line.get("schema"), origin="landmarks_file")


def landmark_records(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[LandmarkRecord]:
    """The ``ok`` lines of a landmarks file (:func:`~mfassl_faces.landmark_cache.read_landmarks_file`) as
    :class:`LandmarkRecord` objects (``origin="landmarks_file"``).

    Args:
        path: the landmarks file.
        root: the dataset folder the paths are relative to (default: the file's folder).
    """
    base = Path(root) if root is not None else Path(path).parent
    return [_cached_record(base / rel, line) for rel, line in read_landmarks_file(path).items()
            if line["status"] == "ok"]


def collect_landmark_records(image_dir: str | os.PathLike, annotations: dict[str, np.ndarray] | None = None,
                             annotation_schema: str | LandmarkSchema | None = None,
                             landmarks_file: str | os.PathLike | None = None, source: str | None = None,
                             source_kwargs: dict[str, Any] | None = None, workers: int = 1,
                             progress: bool = False, overwrite: bool = False,
                             option: str = "--landmarks-file") -> tuple[list[LandmarkRecord], dict[str, int]]:
    """Landmarks for every image of a folder, from the best place that has them.

    In order, for each image (relative path under ``image_dir``): the dataset's ``annotations`` (e.g.
    :func:`read_celeba_landmarks`, keyed by file name or relative path), a ``.pts`` file beside the image,
    the ``landmarks_file`` (JSON lines of ``python -m mfassl_faces landmarks``), and only for the images
    still without, the detector ``source``; its answers are appended to ``landmarks_file`` (the cache), so
    they are computed once, not per epoch or per run.

    Args:
        image_dir: the image folder (searched recursively).
        annotations: ``{file: (N, 2)}`` landmark table of the dataset.
        annotation_schema: the table's layout (default from the number of points).
        landmarks_file: landmarks file to read and, with ``source``, to extend.
        source: detector for images without landmarks (``dlib``, ``fan``); None leaves them out.
        source_kwargs: its keyword arguments.
        workers: detector processes.
        progress: progress bar for the detector.
        overwrite: let the detector start a new ``landmarks_file`` in place of an existing file that is not a
            landmarks file (:func:`~mfassl_faces.landmark_cache.compute_landmarks`; without it such a file is
            refused before anything is read).
        option: the command-line option that named ``landmarks_file``, for the messages.

    Returns:
        ``(records, counts)``; ``counts`` has ``annotation``, ``pts``, ``landmarks_file``, ``detector``,
        ``no_face``, ``errors`` and ``missing`` (images left without landmarks).
    """
    root = Path(image_dir)
    rels = list_images(root)
    counts = dict.fromkeys(("annotation", "pts", "landmarks_file", "detector", "no_face", "errors", "missing"), 0)
    records: list[LandmarkRecord] = []
    pending: list[Path] = []
    table = annotations or {}
    for rel in rels:
        key = rel.as_posix()
        pts = table.get(key, table.get(rel.name))
        if pts is not None:
            s = get_schema(annotation_schema) if annotation_schema is not None else schema_for_count(len(pts))
            records.append(LandmarkRecord(root / rel, np.asarray(pts, dtype=np.float64), schema=s.name,
                                          origin="annotation"))
            counts["annotation"] += 1
            continue
        beside = (root / rel).with_suffix(".pts")
        if beside.is_file():
            pts = read_pts(beside)
            try:
                s = schema_for_count(pts.shape[0])
            except ValueError as err:
                raise FaceDataError(str(err), beside) from err
            records.append(LandmarkRecord(root / rel, pts, schema=s.name, origin="annotation"))
            counts["pts"] += 1
            continue
        pending.append(rel)
    if source is not None and pending and landmarks_file is not None:  # refuse a foreign file before reading it
        from mfassl.files import OutputGuard

        OutputGuard([root / r for r in rels], overwrite=overwrite).check(
            landmarks_file, option, recognise=is_landmarks_file,
            kind="a landmarks file of python -m mfassl_faces landmarks")
    cached = read_landmarks_file(landmarks_file) if landmarks_file is not None and Path(landmarks_file).is_file() else {}
    if source is not None and pending:
        if landmarks_file is None:
            raise ValueError("a detector source needs a landmarks_file to cache its answers in.")
        missing = [r for r in pending if cached.get(r.as_posix(), {}).get("status") not in ("ok", "no_face")]
        if missing:
            summary = compute_landmarks(root, landmarks_file, source, source_kwargs, workers=workers,
                                        progress=progress, files=missing, overwrite=overwrite, option=option)
            for path, reason in summary["failed"]:
                logger.warning("%s: no landmarks (%s).", root / path, reason)
            cached = read_landmarks_file(landmarks_file)
        fresh = {r.as_posix() for r in missing}
    else:
        fresh = set()
    for rel in pending:
        rec = cached.get(rel.as_posix())
        if rec is None:
            counts["missing"] += 1
            continue
        if rec["status"] != "ok":
            counts["no_face" if rec["status"] == "no_face" else "errors"] += 1
            continue
        records.append(_cached_record(root / rel, rec))
        counts["detector" if rel.as_posix() in fresh else "landmarks_file"] += 1
    logger.info("landmarks for %d of %d images in %s: %s", len(records), len(rels), root, counts)
    return records, counts


def crop_matrix(box: Sequence[float], size: int, margin: float = 0.25) -> np.ndarray:
    """``(2, 3)`` pixel map from the image to a ``size x size`` square crop around ``box`` (enlarged by ``margin``)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    k = (size - 1) / max(side, 1e-6)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return np.array([[k, 0.0, (size - 1) / 2.0 - k * cx], [0.0, k, (size - 1) / 2.0 - k * cy]])


class LandmarkDataset(Dataset):
    """Face crops with landmarks, for the landmark benchmark and for pretraining.

    Args:
        records: from :func:`read_wflw_annotations` or :func:`read_300w_folder`.
        schema: the records' layout (a record with its own ``schema`` keeps it; pretraining only reads the axis).
        size: crop side in pixels.
        margin: box enlargement around the face.
        flip_prob: probability of a horizontal flip (landmarks permuted by the mirror map).
        transform: optional callable applied to the item dict last.
        attribute_names: the flags the items' ``attributes`` carry, in this order (default: WFLW's six in
            their order, then any other flag of the records, sorted).

    Items: ``{"image": (3, S, S) float in [0, 1], "landmarks": (N, 2) crop pixels (x, y),
    "axis": (3,) [n_row, n_col, d] index-space axis of the crop from the landmarks, "axis_fallback": bool,
    "iod": float, "attributes": (A,) float, "path": str}``.
    """

    def __init__(self, records: Sequence[LandmarkRecord], schema: str | LandmarkSchema, size: int = 64,
                 margin: float = 0.25, flip_prob: float = 0.0, transform: Callable[[dict], dict] | None = None,
                 attribute_names: Sequence[str] | None = None) -> None:
        self.records = list(records)
        self.schema = get_schema(schema)
        self.size = int(size)
        self.margin = float(margin)
        self.flip_prob = float(flip_prob)
        self.transform = transform
        present = {k for r in self.records for k in r.attributes}
        self.attribute_names = (list(attribute_names) if attribute_names is not None else
                                [k for k in WFLW_ATTRIBUTES if k in present] + sorted(present - set(WFLW_ATTRIBUTES)))

    def __len__(self) -> int:
        return len(self.records)

    def _points(self, i: int) -> tuple[np.ndarray, LandmarkSchema]:
        rec = self.records[i]
        schema = get_schema(rec.schema) if rec.schema is not None else self.schema
        try:
            return schema.check(rec.landmarks, str(rec.image)), schema
        except ValueError as err:
            raise FaceDataError(str(err), rec.image) from err

    def crop_transform(self, i: int) -> np.ndarray:
        """The ``(2, 3)`` pixel map from face ``i``'s image to its crop (its box, else :func:`face_box` of its
        landmarks, enlarged by ``margin``), before any flip."""
        pts, schema = self._points(i)
        box = self.records[i].box if self.records[i].box is not None else face_box(pts, schema)
        return crop_matrix(box, self.size, self.margin)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import cv2

        rec = self.records[i]
        img = read_image(rec.image)
        pts, schema = self._points(i)
        m = self.crop_transform(i)
        crop = cv2.warpAffine(img, m, (self.size, self.size), flags=cv2.INTER_AREA if m[0, 0] < 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        lm = pts @ m[:, :2].T + m[:, 2]
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            crop = crop[:, ::-1].copy()
            lm = flip_landmarks(lm, schema, self.size)
        axis = axis_from_landmarks(lm, schema, crop.shape)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255.0,
            "landmarks": torch.from_numpy(lm.astype(np.float32)),
            "axis": torch.from_numpy(axis.as_array()),
            "axis_fallback": bool(axis.fallback),
            "iod": float(schema.inter_ocular(lm)),
            "attributes": torch.tensor([float(rec.attributes.get(k, 0)) for k in self.attribute_names]),
            "path": str(rec.image),
        }
        return self.transform(item) if self.transform else item
