"""What a label saved to the MFASSL MONAI Label server must be (copied to ``<app>/mfassl_labels.py``).

``PUT /datastore/label`` stores whatever file it is sent. The MFASSL app's datastore checks the upload first with
:func:`label_problem` and refuses it (HTTP 400, naming the problem) unless it is

- a NIfTI file nibabel reads, whole (a truncated ``.nii.gz`` is found when the voxels are read);
- on its image's grid: the spatial shape of the image (its first three axes; a trailing axis of size 1 is
  accepted) and the same affine (to 1e-3);
- a label map: finite whole numbers, all within one set of label values: the bundle's (its metadata's
  ``label_map`` ``channel_def``: 0 background, 1 necrotic core, 2 edema, 4 enhancing tumour for BraTS 2021),
  or for such a BraTS bundle the BraTS 2023 numbering {0, 1, 2, 3} (3 enhancing tumour), which the bundle's
  training reads too (:func:`label_value_sets`).

nibabel and numpy only (they are in both venvs), so the project's tests run the same checks.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, List, Optional, Sequence, Set

__all__ = ["InvalidLabelError", "BRATS_2021", "BRATS_2023", "label_problem", "bundle_label_values",
           "label_value_sets"]

BRATS_2021 = frozenset({0, 1, 2, 4})
"""BraTS 2018-2021 label values (4 = enhancing tumour): what the segmentation bundle writes."""
BRATS_2023 = frozenset({0, 1, 2, 3})
"""BraTS 2023 label values (3 = enhancing tumour)."""


class InvalidLabelError(ValueError):
    """An uploaded label is not a label map of its image (HTTP 400)."""


def bundle_label_values(bundle: str) -> Optional[Set[int]]:
    """The values of the bundle's ``label_map`` output (metadata ``network_data_format``), background included;
    None when the metadata has none."""
    try:
        with open(os.path.join(bundle, "configs", "metadata.json")) as fh:
            channels = json.load(fh)["network_data_format"]["outputs"]["label_map"]["channel_def"]
        return {int(k) for k in channels}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def label_value_sets(values: Optional[Iterable[int]]) -> Optional[List[Set[int]]]:
    """The sets of values a label may hold for a bundle whose label map has ``values``: that set, and for the
    BraTS 2021 numbering the BraTS 2023 one too; None (no check) for None."""
    if values is None:
        return None
    found = {int(v) for v in values}
    return [found, set(BRATS_2023)] if found == set(BRATS_2021) else [found]


def label_problem(label_file: str, image_file: str,
                  value_sets: Optional[Sequence[Iterable[int]]] = None) -> Optional[str]:
    """Why ``label_file`` cannot be the label map of ``image_file``, or None when it can.

    Args:
        label_file: the uploaded file.
        image_file: the image it labels (a datastore image; its first three axes are the grid).
        value_sets: the label may hold the values of one of these sets (:func:`label_value_sets`); None skips
            the value check (finite whole numbers are still required).
    """
    import nibabel as nib
    import numpy as np

    try:
        lab = nib.load(label_file)
        data = np.asarray(lab.dataobj)  # reads every voxel: a truncated file fails here
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib errors, ValueError...
        text = " ".join(str(e).split())[:200]
        return f"is not a readable NIfTI label map ({type(e).__name__}: {text})"
    try:
        img = nib.load(image_file)
    except Exception as e:
        return f"cannot be checked: its image {os.path.basename(image_file)} cannot be read ({type(e).__name__})"
    grid = tuple(int(s) for s in img.shape[:3])
    shape = tuple(int(s) for s in data.shape)
    if len(shape) == 4 and shape[3] == 1:
        data, shape = data[..., 0], shape[:3]
    if shape != grid:
        return f"has shape {shape}; its image's grid is {grid}"
    if not np.allclose(np.asarray(lab.affine), np.asarray(img.affine), atol=1e-3):
        return (f"has the affine {np.round(lab.affine, 4).tolist()}; its image's is "
                f"{np.round(img.affine, 4).tolist()} (the label must lie on the image's grid)")
    found = np.unique(data)
    if data.dtype.kind == "f" and not np.isfinite(found).all():
        return "holds NaN or infinite values; a label map holds whole label values"
    fractional = [v for v in found.tolist() if float(v) != int(v)]
    if fractional:
        return f"holds the value(s) [{_shown(fractional)}]; a label map holds whole label values"
    if value_sets is not None:
        sets = [sorted({int(v) for v in vs}) for vs in value_sets]
        present = {int(v) for v in found.tolist()}
        if not any(present <= set(vs) for vs in sets):
            bad = sorted(present - set(sets[0]))
            other = "".join(f" (or {vs})" for vs in sets[1:])
            return (f"holds the value(s) [{_shown(bad)}], not among the label values {sets[0]}{other} of the served "
                    "bundle")
    return None


def _shown(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
