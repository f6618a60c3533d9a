"""Mirror pairs: the two halves of an image around its symmetry axis, one reflected onto the other.

For an image with axis ``n . x = d`` (index coordinates, see :mod:`mfassl.geometry`):

1. a rigid, batched canonicalisation moves the axis onto the centre line/plane of the image
   (:func:`canonicalizing_matrices`);
2. ``x_l`` is the half at the lower index along the split dimension, ``x_r`` the upper half
   reflected about the centre onto it; both are resampled straight to ``mirror_size`` by one
   ``grid_sample`` each (the matrices are composed, the image is read once per half).

Token ``i`` of ``x_l`` and token ``i`` of ``x_r`` therefore cover mirror-image anatomy, and the
midline lies at the high-index edge of both halves. Pixels sampled from outside the input give a
validity map, pooled to a key-validity mask per token (:func:`token_mask`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from mfassl.geometry import index_grid, warp
from mfassl.rng import rand

__all__ = [
    "MirrorPair",
    "default_split_dim",
    "centre_axes",
    "canonicalizing_matrices",
    "canonicalize",
    "mirror_pair",
    "token_mask",
    "pair_key_mask",
    "mirror_permutation",
]


class MirrorPair(NamedTuple):
    """A batch of mirror pairs.

    Attributes:
        x_l: ``(B, C, *M)`` lower half.
        x_r: ``(B, C, *M)`` upper half reflected onto the lower one.
        valid_l: ``(B, 1, *M)`` 1 where ``x_l`` was sampled inside the input, else 0.
        valid_r: ``(B, 1, *M)`` likewise for ``x_r``.
        matrix_l: ``(B, D+1, D+1)`` output index -> input index for ``x_l``.
        matrix_r: ``(B, D+1, D+1)`` likewise for ``x_r``.
        axes: ``(B, D+1)`` the axes used (after jitter), rows ``[n, d]`` in input index coordinates.
    """

    x_l: torch.Tensor
    x_r: torch.Tensor
    valid_l: torch.Tensor
    valid_r: torch.Tensor
    matrix_l: torch.Tensor
    matrix_r: torch.Tensor
    axes: torch.Tensor


def default_split_dim(spatial_dims: int) -> int:
    """The left-right dimension when none is given: columns of a ``(H, W)`` image, x of a RAS volume."""
    if spatial_dims == 2:
        return 1
    if spatial_dims == 3:
        return 0
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


def centre_axes(batch: int, spatial_shape: Sequence[int], split_dim: int | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``(B, D+1)`` rows ``[e_split, (S_split - 1) / 2]``: the image centre, the published axis."""
    dims = len(spatial_shape)
    k = default_split_dim(dims) if split_dim is None else split_dim
    row = torch.zeros(dims + 1, device=device)
    row[k] = 1.0
    row[dims] = (spatial_shape[k] - 1) / 2.0
    return row.expand(batch, -1).clone()


def _batch_split_dim(normals: torch.Tensor) -> int:
    votes = normals.abs().argmax(dim=1)
    return int(torch.mode(votes).values.item())


def canonicalizing_matrices(axes: torch.Tensor, spatial_shape: Sequence[int],
                            split_dim: int | None = None) -> torch.Tensor:
    """Batched :func:`mfassl.geometry.canonicalizing_matrix`.

    Args:
        axes: ``(B, D+1)`` rows ``[n, d]`` in index coordinates (``n`` need not be unit).
        spatial_shape: the arrays' spatial shape ``S`` (length ``D``).
        split_dim: the dimension the canonical axis is normal to; default: the batch's majority.

    Returns:
        ``(B, D+1, D+1)`` output index -> input index matrices of the rigid canonicalisation.
    """
    dims = len(spatial_shape)
    if axes.ndim != 2 or axes.shape[1] != dims + 1:
        raise ValueError(f"axes must be (B, {dims + 1}), got {tuple(axes.shape)}.")
    axes = axes.to(torch.float64)
    scale = axes[:, :dims].norm(dim=1, keepdim=True).clamp(min=1e-12)
    n, d = axes[:, :dims] / scale, axes[:, dims] / scale[:, 0]
    k = _batch_split_dim(n) if split_dim is None else split_dim
    sign = torch.where(n[:, k] < 0, -1.0, 1.0).to(n)
    n, d = n * sign[:, None], d * sign
    bsz = axes.shape[0]
    e = torch.zeros_like(n)
    e[:, k] = 1.0
    cos = (n * e).sum(1)
    kmat = n[:, :, None] * e[:, None, :] - e[:, :, None] * n[:, None, :]  # b a^T - a b^T
    eye = torch.eye(dims, dtype=n.dtype, device=n.device).expand(bsz, -1, -1)
    rot = eye + kmat + kmat @ kmat / (1.0 + cos).clamp(min=1e-9)[:, None, None]
    c = (torch.tensor(list(spatial_shape), dtype=n.dtype, device=n.device) - 1.0) / 2.0
    p0 = c[None] - ((n * c[None]).sum(1) - d)[:, None] * n
    m = torch.eye(dims + 1, dtype=n.dtype, device=n.device).repeat(bsz, 1, 1)
    m[:, :dims, :dims] = rot
    m[:, :dims, dims] = p0 - (rot @ c[None, :, None])[..., 0]
    return m.to(torch.float32)


def canonicalize(images: torch.Tensor, axes: torch.Tensor, split_dim: int | None = None,
                 mode: str = "bilinear") -> torch.Tensor:
    """Resample ``(B, C, *S)`` images so each axis becomes the centre line/plane (same shape)."""
    m = canonicalizing_matrices(axes, images.shape[2:], split_dim)
    return warp(images, m.to(images.device), mode=mode)


def _half_matrices(spatial_shape: Sequence[int], out_shape: Sequence[int], k: int,
                   device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror-size output index -> canonical index, for the lower half and the reflected upper half."""
    dims = len(spatial_shape)
    s = torch.tensor(list(spatial_shape), dtype=dtype, device=device)
    o = torch.tensor(list(out_shape), dtype=dtype, device=device)
    scale = (s - 1.0) / (o - 1.0).clamp(min=1.0)
    scale[k] = ((s[k] - 1.0) / 2.0) / (o[k] - 1.0).clamp(min=1.0)
    half = torch.diag(torch.cat([scale, torch.ones(1, dtype=dtype, device=device)]))
    flip = torch.eye(dims + 1, dtype=dtype, device=device)
    flip[k, k] = -1.0
    flip[k, dims] = s[k] - 1.0
    return half, flip @ half


def mirror_pair(images: torch.Tensor, axes: torch.Tensor | None = None,
                mirror_size: int | Sequence[int] = 224, split_dim: int | None = None,
                jitter: float = 0.0, generator: torch.Generator | None = None,
                mode: str = "bilinear") -> MirrorPair:
    """Build mirror pairs for a batch of 2D or 3D images.

    Args:
        images: ``(B, C, H, W)`` or ``(B, C, X, Y, Z)``.
        axes: ``(B, D+1)`` rows ``[n, d]`` in index coordinates; None uses the image centre
            (the published behaviour) along ``split_dim``.
        mirror_size: output spatial size of each half (int for all dims, or one per dim).
        split_dim: the left-right spatial dimension; default from the axes (their majority),
            or :func:`default_split_dim` when ``axes`` is None.
        jitter: random shift of each axis along its normal, uniform in ``+-jitter * S_split``
            (the published default is 0.03 during training).
        generator: random generator for the jitter.
        mode: interpolation, ``"bilinear"`` or ``"nearest"``.

    Returns:
        :class:`MirrorPair`.
    """
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be (B, C, H, W) or (B, C, X, Y, Z), got shape {tuple(images.shape)}.")
    dims = images.ndim - 2
    bsz = images.shape[0]
    shape = tuple(images.shape[2:])
    out_shape = (mirror_size,) * dims if isinstance(mirror_size, int) else tuple(mirror_size)
    if len(out_shape) != dims:
        raise ValueError(f"mirror_size {mirror_size} does not match {dims} spatial dims.")
    if axes is None:
        axes = centre_axes(bsz, shape, split_dim, device=images.device)
    axes = axes.to(device=images.device, dtype=torch.float32)
    k = _batch_split_dim(axes[:, :dims]) if split_dim is None else split_dim
    if jitter > 0:
        unit = axes[:, :dims].norm(dim=1)
        u = rand(bsz, generator=generator, device="cpu" if generator is None else generator.device)
        shift = (2.0 * u.to(images.device) - 1.0) * jitter * shape[k]
        axes = axes.clone()
        axes[:, dims] = axes[:, dims] + shift * unit
    canon = canonicalizing_matrices(axes, shape, k).to(images.device)
    half, flipped = _half_matrices(shape, out_shape, k, images.device, torch.float32)
    m_l, m_r = canon @ half, canon @ flipped
    src = images if images.is_floating_point() else images.float()
    grid_l = index_grid(m_l, out_shape, shape)
    grid_r = index_grid(m_r, out_shape, shape)
    x_l = F.grid_sample(src, grid_l.to(src.dtype), mode=mode, padding_mode="zeros", align_corners=True)
    x_r = F.grid_sample(src, grid_r.to(src.dtype), mode=mode, padding_mode="zeros", align_corners=True)
    tol = 1e-4
    valid_l = (grid_l.abs() <= 1 + tol).all(-1).unsqueeze(1).to(src.dtype)
    valid_r = (grid_r.abs() <= 1 + tol).all(-1).unsqueeze(1).to(src.dtype)
    return MirrorPair(x_l, x_r, valid_l, valid_r, m_l, m_r, axes)


def token_mask(valid: torch.Tensor, patch_size: int | Sequence[int], threshold: float = 0.5) -> torch.Tensor:
    """Pool a pixel validity map to a per-token key mask.

    Args:
        valid: ``(B, 1, *M)`` validity in ``[0, 1]``.
        patch_size: the encoder's patch size (int or one per dim).
        threshold: a token is valid when at least this share of its patch is.

    Returns:
        ``(B, N)`` bool, True where the token is valid; tokens in row-major grid order.
    """
    dims = valid.ndim - 2
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    frac = pool(valid.float(), kernel_size=patch_size, stride=patch_size)
    return (frac >= threshold).flatten(1)


def pair_key_mask(pair: MirrorPair, patch_size: int | Sequence[int], threshold: float = 0.5) -> torch.Tensor:
    """``(B, N)`` bool key mask of a mirror pair: True where the token is valid on both halves."""
    return token_mask(pair.valid_l, patch_size, threshold) & token_mask(pair.valid_r, patch_size, threshold)


def mirror_permutation(grid_shape: Sequence[int], split_dim: int) -> torch.Tensor:
    """Permutation ``pi`` of a row-major patch grid taking token ``i`` to its mirror across ``split_dim``.

    ``tokens[:, pi]`` equals the tokens of the reflected image's grid; ``pi[pi] = identity``.
    """
    idx = torch.arange(int(torch.tensor(list(grid_shape)).prod())).reshape(*grid_shape)
    return idx.flip(split_dim).reshape(-1)
