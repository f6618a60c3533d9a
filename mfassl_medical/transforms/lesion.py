"""Image-level labels of a canonicalised lesion map: is there a lesion, and is it on the left.

After :class:`~mfassl_medical.transforms.CanonicalizeSymmetryd` the symmetry plane (or midline) is the centre
plane of the array along the left-right dimension, so the side of a lesion is the side of its centroid with
respect to that centre. In RAS orientation index 0 grows towards the patient's right, so a centroid below the
centre is on the left. These are the BraTS classification targets of the pretraining bundles' evaluation:
``lesion_present`` (flip-invariant) and ``lesion_left`` (lateralised: a mirror image must swap it).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["LESION_LABELS", "LesionLabels", "LesionLabelsd", "LesionLabelsD", "LesionLabelsDict"]

#: The names of the two labels, in output order.
LESION_LABELS: tuple[str, str] = ("lesion_present", "lesion_left")


class LesionLabels(Transform):
    """``(2,)`` float32 ``[present, left]`` of a ``(1, *S)`` label map whose symmetry plane is the centre.

    ``left`` is NaN when there is no lesion (nothing to lateralise), so metrics leave those images out.

    Args:
        split_dim: the left-right spatial dimension of the array (0 in RAS).
        left_is_low: True when low indices are the patient's left (RAS, LPS); False for LAS-like layouts.
    """

    def __init__(self, split_dim: int = 0, left_is_low: bool = True) -> None:
        self.split_dim = int(split_dim)
        self.left_is_low = bool(left_is_low)

    def __call__(self, label: Any) -> torch.Tensor:
        lab = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
        if lab.ndim < 3:
            raise ValueError(f"label map must be (1, *spatial), got shape {tuple(lab.shape)}.")
        mask = (lab > 0).any(dim=0)
        if not bool(mask.any()):
            return torch.tensor([0.0, float("nan")])
        coords = torch.nonzero(mask)[:, self.split_dim].float()
        centre = (mask.shape[self.split_dim] - 1) / 2.0
        low = bool(coords.mean() < centre)
        return torch.tensor([1.0, float(low == self.left_is_low)])


class LesionLabelsd(MapTransform):
    """Dictionary wrapper of :class:`LesionLabels`: writes ``output_key`` from the label map under ``keys``.

    Args:
        keys: the label map key (one).
        output_key: where the ``(2,)`` labels go.
        split_dim, left_is_low: see :class:`LesionLabels`.
    """

    def __init__(self, keys: KeysCollection = "label", output_key: str = "labels", split_dim: int = 0,
                 left_is_low: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.op = LesionLabels(split_dim, left_is_low)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.op(d[key])
        return d


LesionLabelsD = LesionLabelsDict = LesionLabelsd
