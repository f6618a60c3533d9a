"""Readers for the real dataset layouts (CheXpert, BraTS), the data lists the bundles build from them, and the
datasets of a long run (skip-and-count, caches).

The MONAI transforms (loading that fails loudly, BraTS label conversion, the symmetry axis) are in
:mod:`mfassl_medical.transforms`.
"""

from mfassl_medical.data.brats import (
    BRATS_MODALITIES,
    brats_case_files,
    brats_datalists,
    brats_eval_data,
    brats_inference_datalist,
    brats_pretrain_datalist,
    find_brats_cases,
)
from mfassl_medical.data.cache import SafeCacheDataset, SharedPersistentDataset, preprocessing_hash
from mfassl_medical.data.chexpert import (
    CHEXPERT_COLUMNS,
    CHEXPERT_COMPETITION_LABELS,
    CHEXPERT_LABELS,
    IMAGE_SUFFIXES,
    UNCERTAINTY_POLICIES,
    chexpert_eval_data,
    chexpert_inference_datalist,
    chexpert_patient_id,
    chexpert_pretrain_datalist,
    read_chexpert,
    split_by_patient,
)
from mfassl_medical.data.safe import SkipBadSamples, TooManyBadSamples, find_medical_error
from mfassl_medical.errors import MedicalDataError

__all__ = [
    "BRATS_MODALITIES", "brats_case_files", "find_brats_cases",
    "brats_pretrain_datalist", "brats_datalists", "brats_eval_data", "brats_inference_datalist",
    "CHEXPERT_COLUMNS", "CHEXPERT_LABELS", "UNCERTAINTY_POLICIES", "chexpert_patient_id", "read_chexpert",
    "split_by_patient",
    "CHEXPERT_COMPETITION_LABELS", "IMAGE_SUFFIXES",
    "chexpert_pretrain_datalist", "chexpert_eval_data", "chexpert_inference_datalist",
    "SkipBadSamples", "TooManyBadSamples", "find_medical_error",
    "SafeCacheDataset", "SharedPersistentDataset", "preprocessing_hash",
    "MedicalDataError",
]
