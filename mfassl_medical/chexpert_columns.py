"""The columns of a CheXpert CSV (``train.csv`` / ``valid.csv``): what the reader requires and the demo
builder writes.

:func:`mfassl_medical.data.read_chexpert` reads these columns and the demo chest set
(:mod:`mfassl_medical.demo_data.chest`) writes them; both import them from here, so the reader and the writer
of the table never disagree and neither package imports the other.
"""

from __future__ import annotations

__all__ = ["CHEXPERT_LABELS", "CHEXPERT_COLUMNS"]

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 observations, in the column order of the released CSVs."""

CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
"""The non-label columns every CheXpert CSV has."""
