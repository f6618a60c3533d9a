"""MONAI transforms around the symmetry axis: estimate it, canonicalise the image on it, cut mirror pairs.

Each operation is an array transform with a thin dictionary twin (MONAI style):

=====================================  ==========================================================
array                                  dictionary
=====================================  ==========================================================
:class:`EstimateSymmetryAxis`          :class:`EstimateSymmetryAxisd` (``...D``, ``...Dict``)
:class:`CanonicalizeSymmetry`          :class:`CanonicalizeSymmetryd` (invertible, ``Invertd``)
:class:`MakeMirrorPair`                :class:`MakeMirrorPaird` (random axis jitter)
=====================================  ==========================================================

Data-dictionary keys written by :class:`EstimateSymmetryAxisd` for an image key ``image``:

- ``image_axis``: float32 ``(D+1,)`` row ``[n, d]`` in *index* coordinates of the image (collates
  into the ``(B, D+1)`` tensor that :func:`mfassl.pairing.mirror_pair` and ``MFASSL.forward`` take);
- ``image_axis_world``: float32 ``(D+1,)`` the same axis in *world* coordinates of the image affine
  (stays valid through MONAI spatial transforms that update the affine, e.g. ``Spacingd``, ``Flipd``);
- ``image_axis_info``: dict ``{"normal", "offset", "confidence", "fallback", "dims", "method"}`` (world);
- ``axis_fallback`` (bool) and ``axis_confidence`` (float): True / the confidence of the estimate
  (with several keys: any fallback / the lowest confidence).

A precomputed world axis (``python -m mfassl_medical axes``, the bundles' ``axes_file``) in
``image_axis_precomputed`` (a record ``{"normal", "offset", "confidence", "fallback"}``) is used instead of
estimating; the key is consumed and ``image_axis_info["method"]`` is ``"precomputed"``.

Index coordinates are continuous array indices in the order of the spatial dims (see
:mod:`mfassl.geometry`); a MONAI-loaded 2D PNG is ``(C, W, H)``, so its left-right dim is 0.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import InvertibleTransform, MapTransform, Randomizable, Transform
from monai.utils import TraceKeys, convert_to_tensor, ensure_tuple_rep

from mfassl.geometry import SymmetryHyperplane, canonicalizing_matrix, centre_axis, hyperplane_class, warp
from mfassl.pairing import MirrorPair, default_split_dim, mirror_pair
from mfassl_medical import axis as symmetry_axis
from mfassl_medical.axes_file import read_axes_file
from mfassl_medical.errors import MedicalDataError

__all__ = [
    "image_affine",
    "lr_split_dim",
    "axis_from_row",
    "precomputed_axis",
    "EstimateSymmetryAxis",
    "EstimateSymmetryAxisd",
    "EstimateSymmetryAxisD",
    "EstimateSymmetryAxisDict",
    "CanonicalizeSymmetry",
    "CanonicalizeSymmetryd",
    "CanonicalizeSymmetryD",
    "CanonicalizeSymmetryDict",
    "MakeMirrorPair",
    "MakeMirrorPaird",
    "MakeMirrorPairD",
    "MakeMirrorPairDict",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- helpers
def image_affine(img: Any, spatial_dims: int | None = None) -> np.ndarray:
    """The ``(D+1, D+1)`` index -> world affine of a channel-first image (identity for plain arrays).

    MONAI stores 4x4 affines for 2D images too; they are reduced to 3x3 here.
    """
    dims = (img.ndim - 1) if spatial_dims is None else spatial_dims
    if isinstance(img, MetaTensor):
        aff = to_affine_nd(dims, img.affine.detach().cpu().to(torch.float64))
        return np.asarray(aff, dtype=np.float64)
    return np.eye(dims + 1)


def lr_split_dim(img: Any, spatial_dims: int | None = None) -> int:
    """The spatial dim that runs left-right: the one whose affine column points most along world x
    (RAS/LPS alike) for a MetaTensor; :func:`mfassl.pairing.default_split_dim` for a plain array."""
    dims = (img.ndim - 1) if spatial_dims is None else spatial_dims
    if isinstance(img, MetaTensor):
        aff = image_affine(img, dims)
        return int(np.argmax(np.abs(aff[0, :dims])))
    return default_split_dim(dims)


def axis_from_row(row: Any, **kwargs: Any) -> SymmetryHyperplane:
    """A geometry axis from a ``[n, d]`` row (array, tensor or list); kwargs go to the constructor."""
    r = np.asarray(torch.as_tensor(row).detach().cpu(), dtype=np.float64).reshape(-1)
    return hyperplane_class(r.size - 1)(normal=r[:-1], offset=float(r[-1]), **kwargs)


def _as_index_axis(axis: Any, img: Any, space: str) -> SymmetryHyperplane:
    if not isinstance(axis, SymmetryHyperplane):
        axis = axis_from_row(axis)
    if space == "world":
        axis = axis.to_index(image_affine(img, axis.dims))
    elif space != "index":
        raise ValueError(f"space must be 'index' or 'world', got {space!r}.")
    return axis


def precomputed_axis(value: Any) -> SymmetryHyperplane:
    """A world-frame axis from a precomputed value: an axes-file record / ``to_dict()`` dict
    (``normal``, ``offset``, optional ``confidence`` and ``fallback``), a ``[n, d]`` row, or an axis.

    Raises:
        MedicalDataError: for a record that holds an error or no usable axis.
    """
    if isinstance(value, SymmetryHyperplane):
        return value
    if isinstance(value, Mapping):
        if "error" in value or "normal" not in value or "offset" not in value:
            raise MedicalDataError(f"no axis in the precomputed record ({value.get('error', 'no normal/offset')})",
                                   value.get("path"))
        n = np.asarray(value["normal"], dtype=np.float64).reshape(-1)
        return hyperplane_class(n.size)(normal=n, offset=float(value["offset"]),
                                        confidence=float(value.get("confidence", 1.0)),
                                        fallback=bool(value.get("fallback", False)))
    return axis_from_row(value)


def _axes_table(axes: str | Mapping[str, Any]) -> dict[str, Any]:
    """``{path: record}`` of an axes file (or a mapping), indexed by each record's ``path``, its ``files``
    and the real paths of both."""
    records: dict[str, Any] = dict(axes) if isinstance(axes, Mapping) else read_axes_file(axes)
    table: dict[str, Any] = {}
    for key, rec in records.items():
        names = [key]
        if isinstance(rec, Mapping):
            names += [rec.get("path")] + list(rec.get("files") or [])
        for name in names:
            if name:
                table[str(name)] = rec
                table[os.path.realpath(str(name))] = rec
    return table


def _default_estimator() -> Callable[..., SymmetryHyperplane]:
    """:func:`mfassl_medical.axis.estimate_axis`, looked up at each estimate (so a patched one is used)."""
    return symmetry_axis.estimate_axis


# ---------------------------------------------------------------------- estimate
class EstimateSymmetryAxis(Transform):
    """Estimate the symmetry axis (2D midline / 3D mid-sagittal plane) of a channel-first image.

    Runs :func:`mfassl_medical.axis.estimate_axis` in the world frame of the image affine and returns
    the axis in *index* coordinates of the image. Never raises for a bad estimate: an estimator
    error or a confidence below ``min_confidence`` gives the image centre with ``fallback=True``,
    logged with a warning naming the file. Deterministic (safe to cache with ``CacheDataset`` /
    ``PersistentDataset``).

    Args:
        method: estimator name from ``mfassl_medical.axis.AXIS_ESTIMATORS`` (``"auto"``, ``"midline"``,
            ``"msp"``, ``"centre"``).
        min_confidence: passed to the estimator (None: its default).
        split_dim: left-right spatial dim used for the centre fallback (None: from the affine,
            see :func:`lr_split_dim`).
        estimator: a callable with ``estimate_axis``'s signature (tests, custom estimators).
        axes: precomputed axes: the path of an axes file (``python -m mfassl_medical axes``) or a mapping
            ``{image path: record or world row}``; an image whose source file (``filename_or_obj``) is in it
            is not estimated, its world axis is mapped through the image's current affine. Others are
            estimated as usual.
        kwargs: further estimator arguments.

    Call with ``img`` and optionally ``axis``, a precomputed world-frame axis (record, ``[n, d]`` row or
    geometry axis) that skips the estimator. Input ``(C, H, W)`` or ``(C, X, Y, Z)``; output a
    :class:`~mfassl.geometry.SymmetryAxis2D` / :class:`~mfassl.geometry.SymmetryPlane3D` in index
    coordinates whose ``info`` holds ``"world"`` (the world-frame axis), ``"method"`` (``"precomputed"``
    for a given axis) and, after an error, ``"error"``.
    """

    def __init__(self, method: str = "auto", min_confidence: float | None = None, split_dim: int | None = None,
                 estimator: Callable[..., SymmetryHyperplane] | None = None,
                 axes: str | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.method = method
        self.min_confidence = min_confidence
        self.split_dim = split_dim
        self.estimator = estimator
        self.axes = axes
        self._table: dict[str, Any] | None = None
        self.kwargs = kwargs

    def lookup(self, img: Any) -> Any:
        """The precomputed record of ``img``'s source file in :attr:`axes`, or None."""
        if self.axes is None:
            return None
        if self._table is None:
            self._table = _axes_table(self.axes)
        src = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
        names = list(src) if isinstance(src, (list, tuple)) else [src]
        import os

        for name in names:
            if name:
                for cand in (str(name), os.path.realpath(str(name))):
                    if cand in self._table:
                        return self._table[cand]
        return None

    def _precomputed(self, img: Any, dims: int, affine: np.ndarray, value: Any, src: str) -> SymmetryHyperplane:
        world = precomputed_axis(value)
        if world.dims != dims:
            raise MedicalDataError(f"precomputed axis has {world.dims} dims, the image {dims} spatial dims "
                                   f"(shape {tuple(img.shape)})", src or None)
        index = world.to_index(affine)
        return index.replace(info={"world": world, "method": "precomputed"})

    def _fallback(self, img: Any, dims: int, affine: np.ndarray, reason: str) -> SymmetryHyperplane:
        k = self.split_dim if self.split_dim is not None else lr_split_dim(img, dims)
        idx = centre_axis(tuple(img.shape[1:]), k, confidence=0.0, fallback=True)
        world = idx.to_world(affine)
        return idx.replace(info={"world": world, "method": "centre", "error": reason})

    def __call__(self, img: Any, axis: Any = None) -> SymmetryHyperplane:
        dims = img.ndim - 1
        src = img.meta.get("filename_or_obj", "") if isinstance(img, MetaTensor) else ""
        src = ";".join(map(str, src)) if isinstance(src, (list, tuple)) else str(src or "")
        if dims not in (2, 3):  # bad input, not a bad estimate: say so (SkipBadSamples can skip it)
            raise MedicalDataError(f"expected a channel-first 2D or 3D image, got shape {tuple(img.shape)}",
                                   src or None)
        affine = image_affine(img, dims)
        if axis is None:
            axis = self.lookup(img)
        if axis is not None:
            return self._precomputed(img, dims, affine, axis, src)
        kwargs = dict(self.kwargs)
        if self.min_confidence is not None:
            kwargs["min_confidence"] = self.min_confidence
        try:
            est = self.estimator or _default_estimator()
            world = est(img, affine=affine, method=self.method, **kwargs)
            index = world.to_index(affine)
        except Exception as e:  # never crash a run on an estimate
            reason = f"{type(e).__name__}: {e}"
            logger.warning("axis estimation failed for %s (%s); using the image centre", src or "image", reason)
            return self._fallback(img, dims, affine, reason)
        info = dict(world.info)
        info.update(world=world, method=info.get("method", self.method))
        if world.fallback:
            logger.warning("axis estimate for %s has low confidence %.3f; fell back to the image centre",
                           src or "image", world.confidence)
        return index.replace(info=info)


class EstimateSymmetryAxisd(MapTransform):
    """Dictionary wrapper of :class:`EstimateSymmetryAxis`.

    Args:
        keys: image keys (usually just ``"image"``).
        axis_keys: where to write the index-space row per key (default ``"{key}_axis"``; e.g. ``"axis"``
            for :func:`mfassl.engine.default_prepare_batch`). ``"{...}_world"`` and ``"{...}_info"`` are
            written beside it (world row and the axis dict).
        fallback_key: key of the fallback flag (``"axis_fallback"``).
        confidence_key: key of the confidence (``"axis_confidence"``).
        method, min_confidence, split_dim, estimator, axes, kwargs: see :class:`EstimateSymmetryAxis`.
        precomputed_key: the data-dict key of a precomputed world axis per image key (default
            ``"{key}_axis_precomputed"``; the bundles' data lists write it from ``axes_file``): when present
            the estimator is not run and the axis is mapped through the image's current affine.
        allow_missing_keys: do not raise when a key is absent.

    Writes float32 ``(D+1,)`` rows and Python scalars only, so the output pickles and collates.
    """

    def __init__(self, keys: KeysCollection, axis_keys: KeysCollection | None = None, method: str = "auto",
                 min_confidence: float | None = None, split_dim: int | None = None,
                 estimator: Callable[..., SymmetryHyperplane] | None = None, fallback_key: str = "axis_fallback",
                 confidence_key: str = "axis_confidence", allow_missing_keys: bool = False,
                 axes: str | Mapping[str, Any] | None = None, precomputed_key: KeysCollection | None = None,
                 **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.axis_keys = tuple(f"{k}_axis" for k in self.keys) if axis_keys is None else \
            ensure_tuple_rep(axis_keys, len(self.keys))
        self.precomputed_keys = tuple(f"{k}_axis_precomputed" for k in self.keys) if precomputed_key is None \
            else ensure_tuple_rep(precomputed_key, len(self.keys))
        self.estimator = EstimateSymmetryAxis(method, min_confidence, split_dim, estimator, axes=axes, **kwargs)
        self.fallback_key = fallback_key
        self.confidence_key = confidence_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        fallbacks, confs = [], []
        for key, akey, pkey in self.key_iterator(d, self.axis_keys, self.precomputed_keys):
            ax = self.estimator(d[key], d.pop(pkey, None))
            world = ax.info.get("world", ax)
            d[akey] = ax.as_array()
            d[f"{akey}_world"] = world.as_array()
            info = world.to_dict()
            info["method"] = str(ax.info.get("method", self.estimator.method))
            if "error" in ax.info:
                info["error"] = str(ax.info["error"])
            d[f"{akey}_info"] = info
            fallbacks.append(bool(ax.fallback))
            confs.append(float(ax.confidence))
        if fallbacks:
            d[self.fallback_key] = any(fallbacks)
            d[self.confidence_key] = min(confs)
        return d


# ---------------------------------------------------------------------- canonicalise
class CanonicalizeSymmetry(InvertibleTransform):
    """Resample a channel-first image so its symmetry axis becomes the centre line (2D) / plane (3D).

    The rigid index-space matrix ``M`` (output index -> input index) comes from
    :func:`mfassl.geometry.canonicalizing_matrix`; the output keeps the input's spatial shape and its
    MONAI affine becomes ``affine @ M``, so world coordinates are preserved. ``M`` is recorded in the
    applied-operations trace (``extra_info["matrix"]``) and :meth:`inverse` resamples back with
    ``M^-1`` (``Invertd`` works). Index coordinates should be isotropic (resample with ``Spacing``
    first); otherwise the rotation is not rigid in world space and a warning is logged.

    Args:
        mode: ``"bilinear"`` or ``"nearest"`` (label maps).
        padding_mode: ``grid_sample`` padding outside the field of view (``"zeros"``, ``"border"``,
            ``"reflection"``).
        split_dim: the left-right spatial dim the axis is normal to (None: the axis' dominant dim).

    Call with ``img`` ``(C, *S)`` and ``axis`` (a geometry axis or a ``[n, d]`` row) in ``space``
    ``"index"`` (default) or ``"world"`` coordinates; returns ``(C, *S)`` of the input's type.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros", split_dim: int | None = None) -> None:
        self.mode = mode
        self.padding_mode = padding_mode
        self.split_dim = split_dim

    def matrix(self, img: Any, axis: Any, space: str = "index") -> np.ndarray:
        """``(D+1, D+1)`` output index -> input index matrix for ``img`` and ``axis``."""
        ax = _as_index_axis(axis, img, space)
        return canonicalizing_matrix(ax, tuple(img.shape[1:]), self.split_dim)

    def _apply(self, img: Any, m: np.ndarray, mode: str, padding_mode: str, extra: dict | None) -> Any:
        img_t = convert_to_tensor(img, track_meta=True)
        src = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        out = warp(src[None].to(torch.float32), torch.as_tensor(m, dtype=torch.float32), mode=mode,
                   padding_mode=padding_mode)[0]
        if not src.is_floating_point() and mode == "nearest":
            out = out.round().to(src.dtype)
        elif src.is_floating_point():
            out = out.to(src.dtype)
        meta = self.track_transform_meta(img_t, sp_size=list(img_t.shape[1:]),
                                         affine=torch.as_tensor(m, dtype=torch.float64), extra_info=extra,
                                         transform_info=self.get_transform_info())
        if isinstance(img_t, MetaTensor):
            res = MetaTensor(out)
            return res.copy_meta_from(meta)
        return out

    def _check_isotropic(self, img: Any) -> None:
        if isinstance(img, MetaTensor):
            aff = image_affine(img)
            sp = np.linalg.norm(aff[:-1, :-1], axis=0)
            if sp.max() > 1.01 * sp.min():
                logger.warning("CanonicalizeSymmetry on anisotropic voxels %s of %s: the index-space rotation is "
                               "not rigid in world space; resample with Spacing first", np.round(sp, 3),
                               img.meta.get("filename_or_obj", "image"))

    def __call__(self, img: Any, axis: Any, space: str = "index", mode: str | None = None,
                 padding_mode: str | None = None) -> Any:
        if img.ndim - 1 not in (2, 3):
            raise ValueError(f"expected a channel-first 2D or 3D image, got shape {tuple(img.shape)}.")
        self._check_isotropic(img)
        ax = _as_index_axis(axis, img, space)
        m = canonicalizing_matrix(ax, tuple(img.shape[1:]), self.split_dim)
        mode = mode or self.mode
        padding_mode = padding_mode or self.padding_mode
        extra = {"matrix": m.tolist(), "mode": mode, "padding_mode": padding_mode,
                 "axis": [float(v) for v in ax.as_array()]}
        return self._apply(img, m, mode, padding_mode, extra)

    def inverse(self, data: Any) -> Any:
        """Undo the most recent canonicalisation recorded on the MetaTensor ``data``."""
        transform = self.pop_transform(data)
        extra = transform[TraceKeys.EXTRA_INFO]
        m_inv = np.linalg.inv(np.asarray(extra["matrix"], dtype=np.float64))
        with self.trace_transform(False):
            return self._apply(data, m_inv, extra["mode"], extra["padding_mode"], None)


class CanonicalizeSymmetryd(MapTransform, InvertibleTransform):
    """Dictionary wrapper of :class:`CanonicalizeSymmetry`; all keys use the axis of ``axis_key``.

    The axis is read from ``"{axis_key}_world"`` (world row, mapped through each image's current
    affine, robust to ``Spacingd`` & co. between estimation and here) when present, else from the
    index row ``axis_key``. Afterwards ``axis_key`` holds the centre row (the canonical axis) and the
    world row is unchanged (the axis has not moved in world space). ``inverse`` restores the images and
    the index row, so ``Invertd`` works on each key.

    Args:
        keys: keys to resample (e.g. ``["image", "label"]``).
        axis_key: the index row key written by :class:`EstimateSymmetryAxisd` (default ``"{keys[0]}_axis"``).
        mode: per key or one for all (``"nearest"`` for labels).
        padding_mode: per key or one for all.
        split_dim: see :class:`CanonicalizeSymmetry`.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, axis_key: str | None = None, mode: str | Sequence[str] = "bilinear",
                 padding_mode: str | Sequence[str] = "zeros", split_dim: int | None = None,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.axis_key = axis_key or f"{self.keys[0]}_axis"
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))
        self.canonicalizer = CanonicalizeSymmetry(split_dim=split_dim)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        world_key = f"{self.axis_key}_world"
        if world_key not in d and self.axis_key not in d:
            raise KeyError(f"no axis in the data dict: neither {self.axis_key!r} nor {world_key!r}; "
                           f"run EstimateSymmetryAxisd first.")
        new_row = None
        for key, mode, pad in self.key_iterator(d, self.mode, self.padding_mode):
            img = d[key]
            if world_key in d and isinstance(img, MetaTensor):
                axis, space = d[world_key], "world"
            else:
                axis, space = d[self.axis_key], "index"
            d[key] = self.canonicalizer(img, axis, space=space, mode=mode, padding_mode=pad)
            if new_row is None:
                ax = _as_index_axis(axis, img, space)
                k = ax.split_dim if self.canonicalizer.split_dim is None else self.canonicalizer.split_dim
                new_row = centre_axis(tuple(img.shape[1:]), k).as_array()
        if new_row is not None and self.axis_key in d:
            d[self.axis_key] = new_row
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        restored = None
        for key in self.key_iterator(d):
            img = d[key]
            if restored is None and isinstance(img, MetaTensor) and img.applied_operations:
                restored = img.applied_operations[-1].get(TraceKeys.EXTRA_INFO, {}).get("axis")
            d[key] = self.canonicalizer.inverse(img)
        if restored is not None and self.axis_key in d:
            d[self.axis_key] = np.asarray(restored, dtype=np.float32)
        return d


# ---------------------------------------------------------------------- mirror pair
class MakeMirrorPair(Randomizable, Transform):
    """Cut one image into its mirror pair around its axis (:func:`mfassl.pairing.mirror_pair`, batch of 1).

    ``x_l`` is the half at lower index along the split dim, ``x_r`` the other half reflected onto it;
    both are resampled to ``mirror_size``. A random shift of the axis along its normal, uniform in
    ``+-jitter * S_split`` (the published 0.03 during training), is drawn from this transform's
    random state (``set_random_state`` makes it reproducible).

    Args:
        mirror_size: output spatial size of each half (int or one per dim).
        jitter: axis jitter as a share of the split dim's size (0 = none).
        split_dim: left-right spatial dim (None: the axis' dominant dim, or the affine's left-right dim
            when no axis is given).
        mode: ``"bilinear"`` or ``"nearest"``.

    Call with ``img`` ``(C, *S)`` and ``axis`` (geometry axis or ``[n, d]`` row, index coordinates;
    None = the image centre). Returns a :class:`mfassl.pairing.MirrorPair` without the batch dim:
    ``x_l``/``x_r`` ``(C, *M)``, ``valid_l``/``valid_r`` ``(1, *M)``, ``matrix_l``/``matrix_r``
    ``(D+1, D+1)``, ``axes`` ``(D+1,)`` (the jittered axis).
    """

    def __init__(self, mirror_size: int | Sequence[int] = 224, jitter: float = 0.0, split_dim: int | None = None,
                 mode: str = "bilinear") -> None:
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}.")
        self.mirror_size = mirror_size
        self.jitter = float(jitter)
        self.split_dim = split_dim
        self.mode = mode
        self._shift = 0.0

    def randomize(self, data: Any = None) -> None:
        self._shift = float(self.R.uniform(-1.0, 1.0)) if self.jitter > 0 else 0.0

    def _row(self, img: Any, axis: Any) -> tuple[torch.Tensor, int]:
        dims = img.ndim - 1
        if axis is None:
            k = self.split_dim if self.split_dim is not None else lr_split_dim(img, dims)
            ax = centre_axis(tuple(img.shape[1:]), k)
        else:
            ax = axis if isinstance(axis, SymmetryHyperplane) else axis_from_row(axis)
            k = self.split_dim if self.split_dim is not None else ax.split_dim
        row = torch.as_tensor(ax.as_array(), dtype=torch.float32).clone()
        row[dims] += self._shift * self.jitter * img.shape[1 + k]  # |n| = 1: a shift along the normal
        return row, k

    def __call__(self, img: Any, axis: Any = None, randomize: bool = True, mode: str | None = None
                 ) -> MirrorPair:
        if img.ndim - 1 not in (2, 3):
            raise ValueError(f"expected a channel-first 2D or 3D image, got shape {tuple(img.shape)}.")
        if randomize:
            self.randomize()
        row, k = self._row(img, axis)
        x = convert_to_tensor(img, track_meta=False)
        pair = mirror_pair(x[None].to(torch.float32), row[None], self.mirror_size, split_dim=k, jitter=0.0,
                           mode=mode or self.mode)
        return MirrorPair(*(t[0] for t in pair))


class MakeMirrorPaird(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`MakeMirrorPair`; one jitter draw shared by all keys.

    For each key writes ``{prefix}x_l``, ``{prefix}x_r`` (``(C, *M)``), ``{prefix}valid_l``,
    ``{prefix}valid_r`` (``(1, *M)``) and ``{prefix}mirror_axis`` (the jittered ``[n, d]`` row);
    ``prefix`` is ``""`` for the first key and ``"{key}_"`` for the others unless ``prefixes`` is given.

    Args:
        keys: image keys (first one usually ``"image"``; e.g. ``"label"`` too with mode ``"nearest"``).
        axis_key: index row key (default ``"{keys[0]}_axis"``; absent = the image centre).
        mirror_size, jitter, split_dim: see :class:`MakeMirrorPair`.
        mode: per key or one for all.
        prefixes: output key prefix per key.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, axis_key: str | None = None, mirror_size: int | Sequence[int] = 224,
                 jitter: float = 0.0, split_dim: int | None = None, mode: str | Sequence[str] = "bilinear",
                 prefixes: Sequence[str] | None = None, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.axis_key = axis_key or f"{self.keys[0]}_axis"
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.prefixes = tuple(prefixes) if prefixes is not None else \
            tuple("" if i == 0 else f"{k}_" for i, k in enumerate(self.keys))
        if len(self.prefixes) != len(self.keys):
            raise ValueError(f"need one prefix per key, got {self.prefixes} for {self.keys}.")
        self.pair = MakeMirrorPair(mirror_size, jitter, split_dim)

    def set_random_state(self, seed: int | None = None,
                         state: np.random.RandomState | None = None) -> "MakeMirrorPaird":
        super().set_random_state(seed, state)
        self.pair.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.pair.randomize()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        axis = d.get(self.axis_key)
        for key, mode, prefix in self.key_iterator(d, self.mode, self.prefixes):
            p = self.pair(d[key], axis, randomize=False, mode=mode)
            d[f"{prefix}x_l"], d[f"{prefix}x_r"] = p.x_l, p.x_r
            d[f"{prefix}valid_l"], d[f"{prefix}valid_r"] = p.valid_l, p.valid_r
            d[f"{prefix}mirror_axis"] = p.axes.numpy().astype(np.float32)
        return d


EstimateSymmetryAxisD = EstimateSymmetryAxisDict = EstimateSymmetryAxisd
CanonicalizeSymmetryD = CanonicalizeSymmetryDict = CanonicalizeSymmetryd
MakeMirrorPairD = MakeMirrorPairDict = MakeMirrorPaird
