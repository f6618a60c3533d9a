"""What every landmark source shares: :class:`Face`, the :class:`LandmarkSource` interface, the
:data:`LANDMARK_SOURCES` registry, and choosing faces from a source's answer.

Every source is called as ``source(image, path=None) -> list[Face]`` with an ``(H, W, 3)`` uint8 RGB
image; faces come best first (:meth:`LandmarkSource.rank_key`: by detector score with the size as a
tie-break, sources may refine it), landmarks in 0-based pixel ``(x, y)``. No face gives an empty list
(the caller decides to skip and count); an image too small to hold a face raises
:class:`~mfassl_faces.errors.FaceDataError` naming it (:func:`check_image`).

Two more calls, for evaluation and throughput:

- ``source.detect_batch(images, paths)``: the faces of several images, each list ranked as above; a
  source with a network (``fan``) runs the landmarks of all their faces in batches;
- ``source.landmarks_in_boxes(image, boxes, path)``: one face per given box, without the source's own
  face search deciding which faces exist (face-alignment's ``detected_faces=``), e.g. inside WFLW's
  boxes or 300W's ground-truth boxes; ``landmarks_in_boxes_batch`` does it for several images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mfassl.registry import Registry
from mfassl_faces.errors import FaceDataError

__all__ = ["Face", "LandmarkSource", "LANDMARK_SOURCES", "create_source", "largest_face", "choose_faces", "box_iou",
           "landmark_extent", "check_image", "check_box"]


@dataclass
class Face:
    """One face found in an image.

    Attributes:
        landmarks: ``(N, 2)`` pixel ``(x, y)``.
        schema: the landmark layout's name.
        box: ``(x0, y0, x1, y1)`` detector box in pixels (None for annotations).
        size: side of the detector box in pixels (the ranking's tie-break; annotations: landmark extent).
        score: detector score in the source's own units (None for annotations).
        angle: rotation (degrees) of the image at which the detector found the face.
        detection_confidence: in ``[0, 1]``, how sure the source is that this is a face (1 for annotations);
            it multiplies the axis confidence (:func:`mfassl_faces.axis.axis_from_landmarks`).
        info: source-specific details.
    """

    landmarks: np.ndarray
    schema: str
    box: tuple[float, float, float, float] | None = None
    size: float = 0.0
    score: float | None = None
    angle: float = 0.0
    detection_confidence: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)


class LandmarkSource:
    """Base class: ``source(image, path=None) -> list[Face]`` (best first, :meth:`rank_key`); subclasses implement
    :meth:`detect`."""

    name = "base"

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        return self.rank(self.detect(np.asarray(image), path))

    def rank(self, faces: Sequence[Face]) -> list[Face]:
        """``faces`` in the order a source answers them: best first by :meth:`rank_key`, ties the larger box
        first. ``source(image)`` and :meth:`detect_batch` both rank through here."""
        return sorted(faces, key=lambda f: (-self.rank_key(f), -f.size))

    def rank_key(self, face: Face) -> float:
        """How faces are ordered, highest first (ties: the larger box first): the detector score (0 without one,
        so annotations come largest first)."""
        return 0.0 if face.score is None else float(face.score)

    def detect(self, image: np.ndarray, path: str | os.PathLike | None) -> list[Face]:
        """The faces of an ``(H, W, 3)`` uint8 RGB ``image`` (read from ``path`` when known), in any order."""
        raise NotImplementedError

    def detect_batch(self, images: Sequence[np.ndarray],
                     paths: Sequence[str | os.PathLike | None] | None = None) -> list[list[Face]]:
        """The faces of each image, each list ranked as ``source(image)`` ranks it. Sources that batch their
        network override this; the default answers one image after the other."""
        paths = list(paths) if paths is not None else [None] * len(images)
        return [self(image, path) for image, path in zip(images, paths)]

    def landmarks_in_boxes(self, image: np.ndarray, boxes: Sequence[Sequence[float]],
                           path: str | os.PathLike | None = None) -> list[Face]:
        """One face per ``(x0, y0, x1, y1)`` pixel box of ``image``, in the order of ``boxes``.

        Raises:
            NotImplementedError: the source cannot place landmarks in a given box (``file`` reads annotations).
        """
        raise NotImplementedError(f"the {self.name!r} landmark source does not predict landmarks inside given boxes.")

    def landmarks_in_boxes_batch(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[Sequence[float]]],
                                 paths: Sequence[str | os.PathLike | None] | None = None) -> list[list[Face]]:
        """:meth:`landmarks_in_boxes` for several images (``boxes[k]`` are image ``k``'s); sources that batch their
        network override this."""
        paths = list(paths) if paths is not None else [None] * len(images)
        return [self.landmarks_in_boxes(image, b, path) for image, b, path in zip(images, boxes, paths)]


LANDMARK_SOURCES: Registry[LandmarkSource] = Registry("landmark source")


def create_source(name: str, **kwargs: Any) -> LandmarkSource:
    """Build a landmark source by name (``file``, ``dlib``, ``fan``)."""
    return LANDMARK_SOURCES.create(name, **kwargs)


def landmark_extent(points: np.ndarray) -> tuple[tuple[float, float, float, float], float]:
    """``((x0, y0, x1, y1), side)``: the box around ``(N, 2)`` pixel points and its longer side."""
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1)), float(max(x1 - x0, y1 - y0))


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
        faces: a source's answer, best first.
        index: take ``faces[index]`` (0 = the best).
        box: ``(x0, y0, x1, y1)`` hint: take the face whose box overlaps it most (landmark extent when the
            face has no box).
        all_faces: take every face.

    With none of these, the best face (``faces[0]``, how ``"best"``). Raises ``LookupError`` when the index is out of range or no
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
        overlaps = [box_iou(box, f.box if f.box is not None else landmark_extent(f.landmarks)[0]) for f in faces]
        k = int(np.argmax(overlaps))
        if overlaps[k] <= 0.0:
            raise LookupError(f"no face overlaps the box {tuple(round(float(v), 1) for v in box)} "
                              f"({len(faces)} face(s) found).")
        return [(k, faces[k], "box")]
    return [(0, faces[0], "best")]


def check_image(image: np.ndarray, min_side: int, path: str | os.PathLike | None) -> np.ndarray:
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


def check_box(box: Sequence[float], path: str | os.PathLike | None = None) -> tuple[float, float, float, float]:
    """``box`` as ``(x0, y0, x1, y1)`` floats.

    Raises:
        FaceDataError: naming ``path``, unless the box has four finite values with ``x0 < x1`` and ``y0 < y1``.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as err:
        raise FaceDataError(f"face box {box!r} is not four numbers x0, y0, x1, y1.", path) from err
    if not (all(map(math.isfinite, (x0, y0, x1, y1))) and x0 < x1 and y0 < y1):
        raise FaceDataError(f"face box {(x0, y0, x1, y1)} needs finite x0 < x1 and y0 < y1.", path)
    return x0, y0, x1, y1
