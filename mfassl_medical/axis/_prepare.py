"""Input handling and image pyramids for the axis estimators.

An image arrives as a numpy array, a torch tensor or a MONAI ``MetaTensor``, channel-first
``(C, *S)`` or plain ``(*S)``, with an optional index -> world affine. :func:`prepare` turns it
into one float32 array of 2 or 3 spatial dims (channels averaged, singleton spatial dims dropped)
and the matching ``(D+1, D+1)`` affine. :func:`build_pyramid` then block-averages it into levels
whose affines keep every level in the same world frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["Prepared", "Level", "prepare", "build_pyramid", "block_mean", "prior_normal"]


@dataclass
class Prepared:
    """An image ready for estimation.

    Attributes:
        data: ``(*S)`` float32 array with ``D = len(S)`` in (2, 3), every dim >= 2.
        affine: ``(D+1, D+1)`` index -> world matrix of ``data`` (identity when none was given).
        lr_dim: the spatial dim that runs left-right (the prior for the axis normal).
        keep: the spatial dims of the input that ``data`` keeps (singletons dropped).
    """

    data: np.ndarray
    affine: np.ndarray
    lr_dim: int
    keep: tuple[int, ...]

    @property
    def dims(self) -> int:
        return self.data.ndim


@dataclass
class Level:
    """One pyramid level: ``data`` ``(*S)`` float32 and its index -> world ``affine`` ``(D+1, D+1)``.

    ``factors`` are the block sizes relative to the prepared image.
    """

    data: np.ndarray
    affine: np.ndarray
    factors: tuple[int, ...]

    @property
    def inv(self) -> np.ndarray:
        return np.linalg.inv(self.affine)

    @property
    def spacing(self) -> np.ndarray:
        d = self.data.ndim
        return np.linalg.norm(self.affine[:d, :d], axis=0)


def _to_numpy(image: Any) -> tuple[np.ndarray, bool]:
    """Array of ``image`` and whether it is a MONAI MetaTensor (channel-first by convention)."""
    is_meta = False
    if isinstance(image, torch.Tensor):
        try:
            from monai.data import MetaTensor

            is_meta = isinstance(image, MetaTensor)
        except ImportError:  # pragma: no cover - monai is a dependency
            pass
        t = image.as_tensor() if is_meta else image
        arr = t.detach().cpu().numpy()
    else:
        arr = np.asarray(image)
    return arr, is_meta


def prepare(image: Any, affine: Any = None, channel_first: bool | None = None,
            split_dim: int | None = None) -> Prepared:
    """Validate and normalise an image for estimation.

    Args:
        image: ``(C, *S)`` or ``(*S)`` array / tensor / MetaTensor with 2 or 3 spatial dims.
        affine: index -> world matrix, ``(D+1, D+1)`` or MONAI's ``(4, 4)`` for a 2D image; None for
            index coordinates.
        channel_first: whether dim 0 is channels. None: MetaTensors and 4-dim arrays are
            channel-first; 2- and 3-dim plain arrays are spatial.
        split_dim: the left-right spatial dim (after dropping singleton dims); None: the index dim
            whose affine column points most along world x, or columns of ``(H, W)`` / x of a volume.

    Raises:
        ValueError: empty, non-finite, non-numeric or wrongly shaped input, a bad affine.
    """
    arr, is_meta = _to_numpy(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"image must be numeric, got dtype {arr.dtype}.")
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {tuple(arr.shape)}).")
    if channel_first is None:
        channel_first = is_meta or arr.ndim == 4
    if channel_first:
        if arr.ndim not in (3, 4):
            raise ValueError(f"a channel-first image must be (C, H, W) or (C, X, Y, Z), got shape {tuple(arr.shape)}.")
        data = arr.astype(np.float32, copy=False)
        data = data[0] if data.shape[0] == 1 else data.mean(axis=0, dtype=np.float32)
    else:
        if arr.ndim not in (2, 3):
            raise ValueError(f"image must have 2 or 3 spatial dims, got shape {tuple(arr.shape)}.")
        data = arr.astype(np.float32, copy=False)
    orig_dims = data.ndim
    if not np.isfinite(data).all():
        raise ValueError("image contains NaN or infinite values.")
    keep = tuple(k for k, s in enumerate(data.shape) if s > 1)
    if len(keep) not in (2, 3):
        raise ValueError(f"image needs 2 or 3 spatial dims of size > 1, got spatial shape {tuple(data.shape)}.")
    data = np.ascontiguousarray(data.reshape([data.shape[k] for k in keep]))
    dims = data.ndim

    if affine is None:
        aff = np.eye(dims + 1)
    else:
        a = np.asarray(torch.as_tensor(affine).detach().cpu() if isinstance(affine, torch.Tensor) else affine,
                       dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"affine must be a square matrix, got shape {a.shape}.")
        n = a.shape[0] - 1
        if n == dims:
            aff = a
        elif n >= orig_dims and n >= dims:
            idx = list(keep) + [n]
            aff = a[np.ix_(idx, idx)]
        else:
            raise ValueError(f"affine of shape {a.shape} does not fit an image with {dims} spatial dims.")
        if not np.isfinite(aff).all() or abs(np.linalg.det(aff[:dims, :dims])) < 1e-12:
            raise ValueError("affine must be finite and invertible.")
    if split_dim is None:
        if affine is None:
            split_dim = 1 if dims == 2 else 0
        else:
            cols = aff[:dims, :dims] / np.linalg.norm(aff[:dims, :dims], axis=0)
            split_dim = int(np.argmax(np.abs(cols[0])))
    if not 0 <= split_dim < dims:
        raise ValueError(f"split_dim must be in [0, {dims}), got {split_dim}.")
    return Prepared(data=data, affine=aff, lr_dim=int(split_dim), keep=keep)


def prior_normal(prep: Prepared) -> np.ndarray:
    """World-space unit normal of the index plane ``p[lr_dim] = const`` (the prior axis normal)."""
    d = prep.dims
    e = np.zeros(d)
    e[prep.lr_dim] = 1.0
    n = np.linalg.inv(prep.affine[:d, :d]).T @ e
    return n / np.linalg.norm(n)


def block_mean(data: np.ndarray, factors: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Average non-overlapping blocks of ``factors`` voxels (remainders cropped at the end).

    Returns the ``(*S // factors)`` array and the ``(D+1, D+1)`` matrix mapping its indices to the
    input's (block centre ``f * j + (f - 1) / 2``).
    """
    f = tuple(int(v) for v in factors)
    d = data.ndim
    out = data
    for k, fk in enumerate(f):
        if fk == 1:
            continue
        n = out.shape[k] // fk
        sl = [slice(None)] * d
        acc = None
        for r in range(fk):
            sl[k] = slice(r, r + n * fk, fk)
            part = out[tuple(sl)]
            acc = part.copy() if acc is None else np.add(acc, part, out=acc)
        out = acc
    scale = float(np.prod(f))
    if scale != 1.0:
        out *= np.float32(1.0 / scale)
    m = np.eye(d + 1)
    m[:d, :d] = np.diag(f)
    m[:d, d] = (np.asarray(f, dtype=np.float64) - 1.0) / 2.0
    return np.ascontiguousarray(out, dtype=np.float32), m


def _halving_factors(shape: Sequence[int], spacing: np.ndarray) -> tuple[int, ...]:
    """Factor 2 along dims whose spacing is within 1.5x of the finest (keeps voxels near-isotropic)."""
    f = [2 if (spacing[k] <= 1.5 * spacing.min() and shape[k] >= 8) else 1 for k in range(len(shape))]
    if all(v == 1 for v in f):
        f = [2 if s >= 8 else 1 for s in shape]
    return tuple(f)


def build_pyramid(prep: Prepared, max_voxels: int, coarse_voxels: int) -> list[Level]:
    """Levels from fine to coarse: the finest has at most ``max_voxels``, the coarsest at most
    ``coarse_voxels`` (or cannot shrink further). Each level halves the finest dims of the previous.
    """
    data, aff = prep.data, prep.affine
    factors = np.ones(data.ndim, dtype=int)
    d = data.ndim

    def spacing(a: np.ndarray) -> np.ndarray:
        return np.linalg.norm(a[:d, :d], axis=0)

    # reach the finest working level in one block-mean pass (one read of the full image)
    f_total = np.ones(d, dtype=int)
    shape = np.array(data.shape)
    while np.prod(shape // f_total) > max_voxels:
        step = np.array(_halving_factors(tuple(shape // f_total), spacing(aff) * f_total))
        if np.all(step == 1):
            break
        f_total = f_total * step
    if np.any(f_total > 1):
        data, m = block_mean(data, f_total)
        aff = aff @ m
        factors = f_total
    levels = [Level(data, aff, tuple(int(v) for v in factors))]
    while levels[-1].data.size > coarse_voxels:
        cur = levels[-1]
        step = _halving_factors(cur.data.shape, cur.spacing)
        if all(v == 1 for v in step) or min(s // f for s, f in zip(cur.data.shape, step)) < 4:
            break
        nxt, m = block_mean(cur.data, step)
        levels.append(Level(nxt, cur.affine @ m, tuple(int(a * b) for a, b in zip(cur.factors, step))))
    return levels
