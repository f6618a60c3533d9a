"""Standard augmented views for the base objective, batched on the tensor's device (2D and 3D).

Random resized crops are affine maps, so a whole multi-crop set is made by :func:`mfassl.geometry.warp`
(one ``grid_sample`` per view) with a random flip along the left-right dimension and an intensity
jitter. The view generator draws from torch's global RNG (seed it for reproducible runs), and the
same call with the same RNG state gives the same views whether or not the mirror branch is on.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from mfassl.geometry import warp
from mfassl.options import as_float
from mfassl.pairing import default_split_dim

__all__ = ["MultiCropViews", "random_crop_matrices"]


def random_crop_matrices(batch: int, in_shape: Sequence[int], out_shape: Sequence[int],
                         scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
                         flip_prob: float = 0.0, flip_dim: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, D+1, D+1)`` output index -> input index matrices of random resized crops.

    Args:
        batch: ``B``.
        in_shape: input spatial shape.
        out_shape: crop (output) spatial shape.
        scale: range of the crop's share of the input area/volume.
        ratio: range of the aspect ratio between the first two spatial dims (log-uniform).
        flip_prob: probability of a flip along ``flip_dim``.
        flip_dim: the left-right spatial dimension.
        device: where the matrices live.
    """
    dims = len(in_shape)
    size = torch.tensor([float(s) for s in in_shape])
    area = torch.empty(batch).uniform_(*scale)
    log_r = torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r)
    # extents relative to the input size; the aspect ratio tilts dims 0 and 1, the rest share the scale.
    rel = area.pow(1.0 / dims)[:, None].repeat(1, dims)
    rel[:, 0] = rel[:, 0] * aspect.pow(0.5)
    rel[:, 1] = rel[:, 1] / aspect.pow(0.5)
    rel = rel.clamp(max=1.0)
    extent = rel * (size - 1.0)
    start = torch.rand(batch, dims) * (size - 1.0 - extent)
    out = torch.tensor([float(s) for s in out_shape])
    step = extent / (out - 1.0).clamp(min=1.0)
    flip = torch.rand(batch) < flip_prob
    m = torch.eye(dims + 1).repeat(batch, 1, 1)
    for d in range(dims):
        m[:, d, d] = step[:, d]
        m[:, d, dims] = start[:, d]
    if flip.any():
        k = flip_dim
        m[flip, k, dims] = start[flip, k] + extent[flip, k]
        m[flip, k, k] = -step[flip, k]
    return m.to(device)


class MultiCropViews:
    """Multi-crop view generator: ``n_global`` crops of ``global_size`` then ``n_local`` of ``local_size``.

    Args:
        n_global: large crops (2 for DINO and MoCo-v3, 1 for MAE).
        n_local: small crops (8 for DINO).
        global_size: spatial size of the large crops (int or per dim), 224 published.
        local_size: spatial size of the small crops, 96 published.
        global_scale: area share range of the large crops.
        local_scale: area share range of the small crops.
        flip_prob: probability of a random flip along the left-right dimension (the baseline's flip
            augmentation; 0 = no flip). After each call, :attr:`last_flips` holds one ``(B,)`` bool tensor
            per view (global first), True where that view was flipped.
        flip_dim: the left-right spatial dimension (default: columns in 2D, x in 3D).
        brightness: multiplicative intensity jitter ``1 +- brightness``.
        contrast: contrast jitter ``1 +- contrast`` about the view mean.
        noise_std: additive Gaussian noise (relative to the view's std).
        spatial_dims: 2 or 3.
    """

    def __init__(self, n_global: int = 2, n_local: int = 8, global_size: int | Sequence[int] = 224,
                 local_size: int | Sequence[int] = 96, global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.4), flip_prob: float = 0.5, flip_dim: int | None = None,
                 brightness: float = 0.2, contrast: float = 0.2, noise_std: float = 0.0, spatial_dims: int = 2) -> None:
        if n_global < 1:
            raise ValueError(f"n_global must be at least 1, got {n_global}.")
        self.spatial_dims = spatial_dims
        self.n_global, self.n_local = n_global, n_local
        self.global_size = self._size(global_size)
        self.local_size = self._size(local_size)
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.flip_prob = as_float(flip_prob, "flip_prob", low=0.0, high=1.0)  # bundle values may be strings
        self.last_flips: list[torch.Tensor] = []
        self.flip_dim = default_split_dim(spatial_dims) if flip_dim is None else flip_dim
        self.brightness, self.contrast, self.noise_std = brightness, contrast, noise_std

    def _size(self, s: int | Sequence[int]) -> tuple[int, ...]:
        return (int(s),) * self.spatial_dims if isinstance(s, int) else tuple(int(v) for v in s)

    def _jitter(self, v: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        shape = (b,) + (1,) * (v.ndim - 1)
        if self.brightness > 0:
            v = v * torch.empty(shape).uniform_(1 - self.brightness, 1 + self.brightness).to(v)
        if self.contrast > 0:
            mean = v.mean(dim=tuple(range(1, v.ndim)), keepdim=True)
            v = (v - mean) * torch.empty(shape).uniform_(1 - self.contrast, 1 + self.contrast).to(v) + mean
        if self.noise_std > 0:
            std = v.std(dim=tuple(range(1, v.ndim)), keepdim=True)
            v = v + torch.randn(v.shape).to(v) * self.noise_std * std
        return v

    def _crops(self, images: torch.Tensor, count: int, size: tuple[int, ...], scale: tuple[float, float]) -> list[torch.Tensor]:
        out = []
        for _ in range(count):
            m = random_crop_matrices(images.shape[0], images.shape[2:], size, scale, flip_prob=self.flip_prob,
                                     flip_dim=self.flip_dim, device=images.device)
            self.last_flips.append(m[:, self.flip_dim, self.flip_dim] < 0)  # a flip negates the step
            out.append(self._jitter(warp(images, m, size)))
        return out

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, *S)`` images -> list of ``n_global + n_local`` views, global first."""
        if images.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected (B, C, *S) with {self.spatial_dims} spatial dims, got {tuple(images.shape)}.")
        self.last_flips = []
        return (self._crops(images, self.n_global, self.global_size, self.global_scale)
                + self._crops(images, self.n_local, self.local_size, self.local_scale))
