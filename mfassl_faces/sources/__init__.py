"""Landmark sources behind one interface, chosen by name from :data:`LANDMARK_SOURCES`.

- ``file`` (:mod:`~mfassl_faces.sources.files`): dataset annotations (a landmark file per image: ``.pts``,
  ``.npy``, ``.json``, text);
- ``dlib`` (:mod:`~mfassl_faces.sources.dlib`): dlib's HOG frontal face detector with the 68-point shape
  predictor shipped by face-recognition-models; fully offline. A *staged search* from a small copy of the
  image to full resolution, each stage at rotations 0 and +-25 degrees, stopping at the first stage that
  finds a face, then *landmark passes* on the straightened face, each averaged with the pass on the
  mirrored crop (see :class:`DlibLandmarks`);
- ``fan`` (:mod:`~mfassl_faces.sources.fan`): face-alignment's 2D FAN with the S3FD detector, weights from
  a user-given folder only.

Every source is called as ``source(image, path=None) -> list[Face]`` with an ``(H, W, 3)`` uint8
RGB image; faces come best first (by detector score; the ``dlib`` source weighs the score against the
box size, see :meth:`DlibLandmarks.rank_key`), landmarks in 0-based pixel ``(x, y)``
(:mod:`~mfassl_faces.sources.base`).
No face gives an empty list (the caller decides to skip and count); an image too small to hold a face
raises :class:`~mfassl_faces.errors.FaceDataError` naming it. :func:`choose_faces` picks faces from the
answer (the best, by index, by a box hint, or all). dlib and face-alignment are imported only when their
source is built.
"""

from __future__ import annotations

from mfassl_faces.sources.base import (LANDMARK_SOURCES, Face, LandmarkSource, box_iou, choose_faces, create_source,
                                       largest_face)
from mfassl_faces.sources.dlib import DlibLandmarks, dlib_predictor_path
from mfassl_faces.sources.fan import FAN_WEIGHT_FILES, FanLandmarks, check_fan_weights
from mfassl_faces.sources.files import FileLandmarks

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
    "check_fan_weights",
    "largest_face",
    "choose_faces",
    "box_iou",
]
