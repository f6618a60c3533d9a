"""Landmark sources behind one interface, chosen by name from :data:`LANDMARK_SOURCES`.

- ``file``: dataset annotations (a landmark file per image: ``.pts``, ``.npy``, ``.json``, text);
- ``dlib``: dlib's HOG frontal face detector with the 68-point shape predictor shipped by
  face-recognition-models; fully offline. Tilted faces are handled by a *rotation search* (the
  detector runs on copies of the image rotated in steps of ``angle_step`` degrees and the best
  detection of each face wins) and a *second landmark pass* on the face straightened by the roll
  that the first pass's landmarks give;
- ``fan``: face-alignment's 2D FAN with the S3FD detector, weights from a user-given folder only.

Every source is called as ``source(image, path=None) -> list[Face]`` with an ``(H, W, 3)`` uint8
RGB image; faces come largest first, landmarks in 0-based pixel ``(x, y)``. No face gives an empty
list (the caller decides to skip and count).
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
    """dlib HOG face detector + 68-point shape predictor, with a rotation search and a second pass.

    Args:
        predictor_path: the 68-point ``.dat`` (default: face-recognition-models').
        angles: rotations (degrees) the detector is run at; default ``0, +-step, ...`` up to ``max_angle``.
        angle_step: step of the default rotation search (<= 10 keeps every roll within the detector's reach).
        max_angle: largest rotation searched.
        upsample: dlib upsampling levels run at each angle (detections of all levels are pooled).
        detect_side: images are shrunk so their longer side is at most this before detection.
        refine_passes: landmark passes on the straightened face after the first (0 disables them); they
            stop early once the roll changes by less than a degree.
        min_score: detections below this dlib score are ignored.
    """

    name = "dlib"

    def __init__(self, predictor_path: str | os.PathLike | None = None, angles: Sequence[float] | None = None,
                 angle_step: float = 10.0, max_angle: float = 30.0, upsample: Sequence[int] = (0, 1),
                 detect_side: int = 1200, refine_passes: int = 2, min_score: float = 0.0) -> None:
        import dlib

        path = Path(predictor_path) if predictor_path is not None else dlib_predictor_path()
        if not path.is_file():
            raise FileNotFoundError(f"dlib shape predictor not found: {path}")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        if angles is None:
            steps = int(math.floor(max_angle / angle_step + 1e-9))
            angles = [0.0] + [s * k * angle_step for k in range(1, steps + 1) for s in (-1.0, 1.0)]
        self.angles = [float(a) for a in angles]
        self.upsample = tuple(int(u) for u in upsample)
        self.detect_side = int(detect_side)
        self.refine_passes = int(refine_passes)
        self.min_score = float(min_score)

    # ------------------------------------------------------------------ detection
    def _detect_rotated(self, gray: np.ndarray, angle: float, scale: float) -> list[_Candidate]:
        """Run the detector on ``gray`` (already shrunk by ``scale``) rotated by ``angle``."""
        import cv2
        import dlib

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
        for up in self.upsample:
            rects, scores, _ = self.detector.run(rot, up, 0.0)
            for r, s in zip(rects, scores):
                if s < self.min_score:
                    continue
                c = np.array([(r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0])
                centre = _apply(back, c[None])[0] / scale
                out.append(_Candidate(angle, centre, float(r.width()) / scale, float(s)))
        del dlib
        return out

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
        """68 landmarks from a ``size`` box at ``centre`` in the image rotated by ``angle`` about it."""
        import cv2
        import dlib

        side = int(math.ceil(2.5 * size))
        fc = ((side - 1) / 2.0, (side - 1) / 2.0)
        m = _rotation(angle, centre, fc)
        crop = cv2.warpAffine(gray, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        half = size / 2.0
        rect = dlib.rectangle(int(round(fc[0] - half)), int(round(fc[1] - half)),
                              int(round(fc[0] + half)), int(round(fc[1] + half)))
        shape = self.predictor(crop, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
        return _apply(_invert(m), pts)

    def _redetect_upright(self, gray: np.ndarray, centre: np.ndarray, size: float,
                          angle: float) -> tuple[np.ndarray, float] | None:
        """Detector box of the face in the straightened crop, as (centre, size) in original pixels."""
        import cv2

        side = int(math.ceil(3.0 * size))
        k = min(1.0, 240.0 / max(size, 1.0))  # keep the crop small: a 240 px face is plenty for the detector
        out = max(16, int(math.ceil(side * k)))
        fc = ((out - 1) / 2.0, (out - 1) / 2.0)
        m = _rotation(angle, centre, fc, scale=k)
        crop = cv2.warpAffine(gray, m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        best = None
        for up in self.upsample:
            rects, scores, _ = self.detector.run(crop, up, 0.0)
            for r, s in zip(rects, scores):
                c = np.array([(r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0])
                dist = float(np.linalg.norm(c - np.asarray(fc)))
                if dist < 0.5 * r.width() and (best is None or s > best[2]):
                    best = (c, r.width() / k, s)
        if best is None:
            return None
        return _apply(_invert(m), best[0][None])[0], float(best[1])

    def detect(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        import cv2

        img = np.asarray(image)
        gray = img if img.ndim == 2 else cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        gray = np.ascontiguousarray(gray.astype(np.uint8))
        scale = min(1.0, self.detect_side / max(gray.shape))
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        cands = [c for a in self.angles for c in self._detect_rotated(small, a, scale)]
        faces = []
        for group in self._cluster(cands):
            best = group[0]
            pts = self._landmarks_at(gray, best.centre, best.size, best.angle)
            info: dict[str, Any] = {"detections": len(group), "search_angle": best.angle, "second_pass": False}
            centre, size, angle = best.centre, best.size, best.angle
            for _ in range(self.refine_passes):
                n_xy, _ = axis_to_pixel(axis_from_landmarks(pts, "ibug68", img.shape))
                roll = math.degrees(math.atan2(n_xy[1], n_xy[0]))
                # rotating by -roll turns the axis normal to +x: the face is upright in the crop
                found = self._redetect_upright(gray, centre, size, -roll)
                if found is not None:
                    centre, size = found
                    info["second_pass"] = True
                change = abs(-roll - angle)
                angle = -roll
                pts = self._landmarks_at(gray, centre, size, angle)
                info["roll"] = roll
                if change < 1.0:
                    break
            half = size / 2.0
            faces.append(Face(pts, "ibug68", box=(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half),
                              size=size, score=best.score, angle=angle, info=info))
        return faces


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
        img = np.asarray(image)[..., :3]
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
