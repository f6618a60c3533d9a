"""Readers for the real dataset layouts (CheXpert, BraTS) and fail-loudly / skip-and-count loading."""

from mfassl_medical.data.brats import (
    BRATS_LABEL_SETS,
    BRATS_MODALITIES,
    BRATS_REGIONS,
    ConvertBraTSLabels,
    ConvertBraTSLabelsd,
    ConvertBraTSLabelsD,
    ConvertBraTSLabelsDict,
    brats_case_files,
    find_brats_cases,
)
from mfassl_medical.data.chexpert import (
    CHEXPERT_COLUMNS,
    CHEXPERT_LABELS,
    UNCERTAINTY_POLICIES,
    chexpert_patient_id,
    read_chexpert,
    split_by_patient,
)
from mfassl_medical.data.safe import (
    DEFAULT_MAX_VOXELS,
    CheckImage,
    CheckImaged,
    CheckImageD,
    CheckImageDict,
    SafeLoadImage,
    SafeLoadImaged,
    SafeLoadImageD,
    SafeLoadImageDict,
    SkipBadSamples,
    check_image,
    check_image_header,
    composite_alpha,
    find_medical_error,
    image_header,
    voxel_budget,
)
from mfassl_medical.errors import MedicalDataError

__all__ = [
    "BRATS_LABEL_SETS", "BRATS_MODALITIES", "BRATS_REGIONS", "ConvertBraTSLabels", "ConvertBraTSLabelsd", "ConvertBraTSLabelsD",
    "ConvertBraTSLabelsDict", "brats_case_files", "find_brats_cases",
    "CHEXPERT_COLUMNS", "CHEXPERT_LABELS", "UNCERTAINTY_POLICIES", "chexpert_patient_id", "read_chexpert",
    "split_by_patient",
    "CheckImage", "CheckImaged", "CheckImageD", "CheckImageDict", "SafeLoadImage", "SafeLoadImaged",
    "SafeLoadImageD", "SafeLoadImageDict", "SkipBadSamples", "check_image", "find_medical_error",
    "DEFAULT_MAX_VOXELS", "check_image_header", "composite_alpha", "image_header", "voxel_budget",
    "MedicalDataError",
]
