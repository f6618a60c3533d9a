"""MFASSL faces: landmark schemas with mirror maps, the landmark-based symmetry axis, landmark
sources (annotations, dlib, face-alignment), CelebA-HQ / WFLW / 300W readers, demo data, the
landmark benchmark and the attribute probe. Built on the shared core :mod:`mfassl`.

Coordinates: landmarks and the command line use pixel ``(x, y)`` = (column, row); the core's
:class:`~mfassl.geometry.SymmetryAxis2D` uses index ``(row, col)``. See :mod:`mfassl_faces.axis`.

Names below are imported on first use, so ``python -m mfassl_faces --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mfassl_faces.schemas": ["LandmarkSchema", "SCHEMAS", "WFLW98", "IBUG68", "FIVE_POINT", "get_schema",
                             "schema_for_count", "flip_landmarks"],
    "mfassl_faces.axis": ["axis_from_landmarks", "LandmarkAxisEstimator", "axis_to_pixel", "axis_from_pixel",
                          "pixel_to_index", "index_to_pixel", "symmetry_residual", "angle_between_deg"],
    "mfassl_faces.sources": ["Face", "LandmarkSource", "LANDMARK_SOURCES", "create_source", "largest_face",
                             "choose_faces"],
    "mfassl_faces.errors": ["FaceDataError", "NoFaceFound"],
    "mfassl_faces.readers": ["LandmarkDataset", "LandmarkRecord", "CelebAHQDataset", "read_wflw_annotations",
                             "read_300w_folder", "read_celeba_attributes", "read_celeba_landmarks",
                             "landmark_records", "collect_landmark_records"],
    "mfassl_faces.landmark_cache": ["compute_landmarks", "read_landmarks_file"],
    "mfassl_faces.heads": ["LANDMARK_HEADS", "LinearLandmarkHead", "HeatmapLandmarkHead", "LandmarkModel",
                           "AttributeProbe"],
    "mfassl_faces.benchmark": ["run_landmark_benchmark", "run_attribute_probe"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mfassl_faces' has no attribute {name!r}")
