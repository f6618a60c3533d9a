"""Symmetry axis estimation: chest X-ray / 2D midline and brain mid-sagittal plane.

Public API::

    estimate_axis(image, affine=None, method="auto", min_confidence=0.3, **options)
    estimate_midline(image, affine=None, **options) -> SymmetryAxis2D
    estimate_midsagittal_plane(volume, affine=None, **options) -> SymmetryPlane3D
    estimate_centre(image, affine=None) -> the image centre (published behaviour)
    slice_midline(plane, affine, slice_axis, index) / slice_midlines(...)
    AXIS_ESTIMATORS: Registry with "auto", "midline", "msp", "centre"

See ``docs/axis_estimation.md`` for the method, coordinates and measured accuracy.
"""

from .estimate import (
    AXIS_ESTIMATORS,
    DEFAULT_MIN_CONFIDENCE,
    estimate_axis,
    estimate_centre,
    estimate_midline,
    estimate_midsagittal_plane,
    slice_midline,
    slice_midlines,
)

__all__ = [
    "AXIS_ESTIMATORS",
    "DEFAULT_MIN_CONFIDENCE",
    "estimate_axis",
    "estimate_centre",
    "estimate_midline",
    "estimate_midsagittal_plane",
    "slice_midline",
    "slice_midlines",
]
