"""MONAI transforms of the medical package: symmetry axis, canonicalisation, mirror pairs, BraTS labels,
and fail-loudly loading (re-exported from :mod:`mfassl_medical.data`)."""

from mfassl_medical.data.brats import (
    ConvertBraTSLabels,
    ConvertBraTSLabelsd,
    ConvertBraTSLabelsD,
    ConvertBraTSLabelsDict,
)
from mfassl_medical.data.safe import (
    CheckImage,
    CheckImaged,
    CheckImageD,
    CheckImageDict,
    SafeLoadImage,
    SafeLoadImaged,
    SafeLoadImageD,
    SafeLoadImageDict,
)
from mfassl_medical.transforms.lesion import (
    LESION_LABELS,
    LesionLabels,
    LesionLabelsd,
    LesionLabelsD,
    LesionLabelsDict,
)
from mfassl_medical.transforms.symmetry import (
    CanonicalizeSymmetry,
    CanonicalizeSymmetryd,
    CanonicalizeSymmetryD,
    CanonicalizeSymmetryDict,
    EstimateSymmetryAxis,
    EstimateSymmetryAxisd,
    EstimateSymmetryAxisD,
    EstimateSymmetryAxisDict,
    MirrorPair,
    MirrorPaird,
    MirrorPairD,
    MirrorPairDict,
    axis_from_row,
    image_affine,
    lr_split_dim,
)

__all__ = [
    "LESION_LABELS", "LesionLabels", "LesionLabelsd", "LesionLabelsD", "LesionLabelsDict",
    "EstimateSymmetryAxis", "EstimateSymmetryAxisd", "EstimateSymmetryAxisD", "EstimateSymmetryAxisDict",
    "CanonicalizeSymmetry", "CanonicalizeSymmetryd", "CanonicalizeSymmetryD", "CanonicalizeSymmetryDict",
    "MirrorPair", "MirrorPaird", "MirrorPairD", "MirrorPairDict",
    "ConvertBraTSLabels", "ConvertBraTSLabelsd", "ConvertBraTSLabelsD", "ConvertBraTSLabelsDict",
    "CheckImage", "CheckImaged", "CheckImageD", "CheckImageDict",
    "SafeLoadImage", "SafeLoadImaged", "SafeLoadImageD", "SafeLoadImageDict",
    "axis_from_row", "image_affine", "lr_split_dim",
]
