"""MFASSL faces: landmark schemas with mirror maps, the landmark-based symmetry axis, landmark
sources (annotations, dlib, face-alignment), CelebA-HQ / WFLW / 300W readers, demo data, the
landmark benchmark and the attribute probe. Built on the shared core :mod:`mfassl`.

Coordinates: landmarks and the command line use pixel ``(x, y)`` = (column, row); the core's
:class:`~mfassl.geometry.SymmetryAxis2D` uses index ``(row, col)``. See :mod:`mfassl_faces.axis`.
"""

from mfassl_faces.axis import (LandmarkAxisEstimator, angle_between_deg, axis_from_landmarks, axis_from_pixel,
                               axis_to_pixel, index_to_pixel, pixel_to_index, symmetry_residual)
from mfassl_faces.errors import FaceDataError, NoFaceFound
from mfassl_faces.schemas import (FIVE_POINT, IBUG68, SCHEMAS, WFLW98, LandmarkSchema, flip_landmarks, get_schema,
                                  schema_for_count)
from mfassl_faces.sources import LANDMARK_SOURCES, Face, LandmarkSource, create_source, largest_face

__all__ = [
    "LandmarkSchema", "SCHEMAS", "WFLW98", "IBUG68", "FIVE_POINT", "get_schema", "schema_for_count", "flip_landmarks",
    "axis_from_landmarks", "LandmarkAxisEstimator", "axis_to_pixel", "axis_from_pixel", "pixel_to_index",
    "index_to_pixel", "symmetry_residual", "angle_between_deg",
    "Face", "LandmarkSource", "LANDMARK_SOURCES", "create_source", "largest_face",
    "FaceDataError", "NoFaceFound",
]
