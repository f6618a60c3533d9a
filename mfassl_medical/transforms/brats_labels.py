"""BraTS label maps -> binary tumour sub-region channels (2021 and 2023 labels alike), refusing bad labels.

Labels: 2021 uses 1 = necrotic core (NCR), 2 = oedema (ED), 4 = enhancing tumour (ET); 2023 uses 1 = NCR,
2 = ED, 3 = ET. The evaluated regions are ET, tumour core TC = NCR + ET and whole tumour WT = NCR + ED + ET.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from mfassl_medical.errors import ImageMismatchError, LabelValueError, format_values

__all__ = [
    "BRATS_REGIONS",
    "BRATS_LABEL_SETS",
    "ConvertBraTSLabels",
    "ConvertBraTSLabelsd",
    "ConvertBraTSLabelsD",
    "ConvertBraTSLabelsDict",
]

BRATS_REGIONS: tuple[str, ...] = ("TC", "WT", "ET")
"""Default channel order of :class:`ConvertBraTSLabels` (MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` order)."""

BRATS_LABEL_SETS: dict[str, tuple[int, ...]] = {"auto": (0, 1, 2, 3, 4), "2021": (0, 1, 2, 4), "2023": (0, 1, 2, 3)}
"""The label values :class:`ConvertBraTSLabels` accepts per ``version`` (``"auto"``: either release's, not both)."""


def _label_source(img: Any) -> str | None:
    meta = getattr(img, "meta", None)
    if isinstance(meta, Mapping):
        src = meta.get("filename_or_obj")
        if src not in (None, ""):
            return str(src)
    return None


def _spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """Spatial shape of a label map ``(1, X, Y, Z)`` / ``(X, Y, Z)`` (2D alike)."""
    shape = tuple(int(s) for s in shape)
    return shape[1:] if len(shape) in (3, 4) and shape[0] == 1 else shape


class ConvertBraTSLabels(Transform):
    """BraTS label map -> binary region channels, for 2021 (ET = 4) and 2023 (ET = 3) labels alike.

    ``ET = {3, 4}``, ``TC = {1, 3, 4}``, ``WT = {1, 2, 3, 4}``: 2021 maps never contain 3 and 2023
    maps never contain 4, so one rule serves both. ``version`` pins one release when wanted.

    Labels are never changed silently: a map holding a value outside :data:`BRATS_LABEL_SETS`
    (``{0, 1, 2, 4}`` for BraTS 2018-2021, ``{0, 1, 2, 3}`` for BraTS 2023; e.g. 7, 255, a negative
    value, a 0/255 mask), both 3 and 4 (``"auto"``), a non-integer value (a rescaled or interpolated
    map) or a NaN raises :class:`~mfassl_medical.errors.LabelValueError` naming the file (the
    MetaTensor's ``filename_or_obj``, when there is one) and the offending values.

    Args:
        regions: output channel order, names from ``"TC"``, ``"WT"``, ``"ET"`` (default TC, WT, ET,
            the order of MONAI's ``ConvertToMultiChannelBasedOnBratsClasses``).
        version: ``"auto"`` (default), ``"2021"`` or ``"2023"``.

    Input ``(1, X, Y, Z)`` or ``(X, Y, Z)`` integer-valued labels; output ``(len(regions), X, Y, Z)`` of
    the input's type (MetaTensor meta kept), values 0/1.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: Sequence[str] = BRATS_REGIONS, version: str = "auto") -> None:
        bad = [r for r in regions if r not in ("TC", "WT", "ET")]
        if bad:
            raise ValueError(f"unknown region(s) {bad}; use 'TC', 'WT', 'ET'.")
        version = str(version)
        if version not in ("auto", "2021", "2023"):
            raise ValueError(f"version must be 'auto', '2021' or '2023', got {version!r}.")
        self.regions = tuple(regions)
        self.version = version

    def _sets(self) -> dict[str, tuple[int, ...]]:
        et = {"auto": (3, 4), "2021": (4,), "2023": (3,)}[self.version]
        return {"ET": et, "TC": (1, *et), "WT": (1, 2, *et)}

    def check(self, t: torch.Tensor, source: str | None = None) -> torch.Tensor:
        """The labels of ``t`` as int64, or raise :class:`LabelValueError` (see the class docstring)."""
        allowed = BRATS_LABEL_SETS[self.version]
        name = {"auto": "BraTS 2018-2021 {0, 1, 2, 4} or 2023 {0, 1, 2, 3}",
                "2021": "BraTS 2018-2021 {0, 1, 2, 4}", "2023": "BraTS 2023 {0, 1, 2, 3}"}[self.version]
        if t.is_floating_point():
            rounded = torch.round(t)
            frac = t != rounded  # NaN too
            if bool(frac.any()):
                nan = torch.isnan(t)
                if bool(nan.any()):
                    raise LabelValueError(f"label map holds {int(nan.sum())} NaN value(s); the label set is {name}",
                                          source, values=[float("nan")], allowed=allowed)
                vals = torch.unique(t[frac])
                raise LabelValueError(f"label map holds non-integer value(s) {format_values(vals.tolist())} "
                                      f"({int(frac.sum())} voxels): a rescaled or interpolated map is not a BraTS "
                                      f"label map (the label set is {name}; resample labels with mode='nearest')",
                                      source, values=vals.tolist()[:8], allowed=allowed)
            if not bool(torch.isfinite(t.amax()) and torch.isfinite(t.amin())):
                raise LabelValueError(f"label map holds infinite values; the label set is {name}", source,
                                      values=[float("inf")], allowed=allowed)
            t = rounded
        t = t.to(torch.int64)
        if t.numel() and 0 <= int(t.min()) and int(t.max()) <= 4:  # the usual case: one O(n) pass
            present = torch.nonzero(torch.bincount(t.reshape(-1), minlength=5)).reshape(-1).tolist()
        else:
            present = torch.unique(t).tolist()
        bad = [v for v in present if v not in allowed]
        if bad:
            hint = " (a 0/255 mask?)" if 255 in bad else ""
            raise LabelValueError(f"label map holds value(s) {format_values(bad)}{hint} outside the label set "
                                  f"{name}; values present: {format_values(present)}", source, values=bad,
                                  allowed=allowed)
        if self.version == "auto" and 3 in present and 4 in present:
            raise LabelValueError("label map holds both 3 and 4: enhancing tumour is 4 in BraTS 2018-2021 and 3 in "
                                  f"BraTS 2023, never both; values present: {format_values(present)}", source,
                                  values=[3, 4], allowed=allowed)
        return t

    def __call__(self, img: Any) -> Any:
        source = _label_source(img)
        t = convert_to_tensor(img, track_meta=False)
        if t.ndim >= 1 and t.shape[0] == 1 and t.ndim in (3, 4):
            t = t[0]
        t = self.check(t, source)
        sets = self._sets()
        lut = torch.zeros(len(self.regions), 5, dtype=torch.float32)  # region x label value -> 0/1
        for i, r in enumerate(self.regions):
            lut[i, list(sets[r])] = 1.0
        out = lut[:, t]
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class ConvertBraTSLabelsd(MapTransform):
    """Dictionary wrapper of :class:`ConvertBraTSLabels`, which also checks that each label map lies on
    the image's grid.

    Args:
        keys: keys of the label maps (e.g. ``"label"``).
        regions: see :class:`ConvertBraTSLabels`.
        version: see :class:`ConvertBraTSLabels`.
        allow_missing_keys: do not raise when a key is absent (cases without ``seg``).
        image_key: the loaded image ``(C, X, Y, Z)`` whose spatial shape each label map ``(1, X, Y, Z)``
            must have (checked when the key holds a loaded array; None: no check).

    Raises:
        LabelValueError: see :class:`ConvertBraTSLabels`.
        ImageMismatchError: a label map's spatial shape differs from the image's; the message names the
            label file, the image file and both shapes.
    """

    def __init__(self, keys: KeysCollection, regions: Sequence[str] = BRATS_REGIONS, version: str = "auto",
                 allow_missing_keys: bool = False, image_key: str | None = "image") -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ConvertBraTSLabels(regions, version)
        self.image_key = image_key

    def _check_grid(self, d: Mapping[Hashable, Any], key: Hashable) -> None:
        image = d.get(self.image_key) if self.image_key is not None else None
        if image is None or not hasattr(image, "shape") or not hasattr(d[key], "shape"):
            return
        lab = _spatial(d[key].shape)
        full = tuple(int(s) for s in image.shape)
        img = full[-len(lab):] if len(full) >= len(lab) else full
        if img != lab:
            lab_src = _label_source(d[key]) or f"key {key!r}"
            img_src = _label_source(image) or f"key {self.image_key!r}"
            raise ImageMismatchError(f"label map of spatial shape {lab} does not match the image {img_src} of "
                                     f"spatial shape {img} (full shapes {tuple(d[key].shape)} and {full})",
                                     lab_src, shapes={lab_src: lab, img_src: img}, reference=img_src)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check_grid(d, key)
            d[key] = self.converter(d[key])
        return d


ConvertBraTSLabelsD = ConvertBraTSLabelsDict = ConvertBraTSLabelsd
