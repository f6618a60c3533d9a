"""MONAI transforms of the medical package, each an array transform with its dictionary twin (``...d``,
aliases ``...D``, ``...Dict``):

- symmetry (:mod:`~mfassl_medical.transforms.symmetry`): ``EstimateSymmetryAxis``, ``CanonicalizeSymmetry``,
  ``MakeMirrorPair``;
- loading that fails loudly (:mod:`~mfassl_medical.transforms.loading`): ``SafeLoadImage``, ``CheckImage``;
- BraTS labels (:mod:`~mfassl_medical.transforms.brats_labels`): ``ConvertBraTSLabels``;
- lesion classification targets (:mod:`~mfassl_medical.transforms.lesion`): ``LesionLabels``.
"""

from mfassl_medical.transforms.brats_labels import (
    BRATS_LABEL_SETS,
    BRATS_REGIONS,
    ConvertBraTSLabels,
    ConvertBraTSLabelsd,
    ConvertBraTSLabelsD,
    ConvertBraTSLabelsDict,
)
from mfassl_medical.transforms.lesion import (
    LESION_LABELS,
    LesionLabels,
    LesionLabelsd,
    LesionLabelsD,
    LesionLabelsDict,
)
from mfassl_medical.transforms.loading import (
    DEFAULT_MAX_VOXELS,
    MAX_VOXELS_ENV,
    CheckImage,
    CheckImaged,
    CheckImageD,
    CheckImageDict,
    SafeLoadImage,
    SafeLoadImaged,
    SafeLoadImageD,
    SafeLoadImageDict,
    check_image,
    check_image_header,
    composite_alpha,
    image_header,
    voxel_budget,
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
    MakeMirrorPair,
    MakeMirrorPaird,
    MakeMirrorPairD,
    MakeMirrorPairDict,
    axis_from_row,
    image_affine,
    lr_split_dim,
    precomputed_axis,
)

__all__ = [
    "LESION_LABELS", "LesionLabels", "LesionLabelsd", "LesionLabelsD", "LesionLabelsDict",
    "EstimateSymmetryAxis", "EstimateSymmetryAxisd", "EstimateSymmetryAxisD", "EstimateSymmetryAxisDict",
    "CanonicalizeSymmetry", "CanonicalizeSymmetryd", "CanonicalizeSymmetryD", "CanonicalizeSymmetryDict",
    "MakeMirrorPair", "MakeMirrorPaird", "MakeMirrorPairD", "MakeMirrorPairDict",
    "BRATS_LABEL_SETS", "BRATS_REGIONS",
    "ConvertBraTSLabels", "ConvertBraTSLabelsd", "ConvertBraTSLabelsD", "ConvertBraTSLabelsDict",
    "CheckImage", "CheckImaged", "CheckImageD", "CheckImageDict",
    "SafeLoadImage", "SafeLoadImaged", "SafeLoadImageD", "SafeLoadImageDict",
    "DEFAULT_MAX_VOXELS", "MAX_VOXELS_ENV", "check_image", "check_image_header", "composite_alpha", "image_header",
    "voxel_budget",
    "axis_from_row", "image_affine", "lr_split_dim", "precomputed_axis",
]
