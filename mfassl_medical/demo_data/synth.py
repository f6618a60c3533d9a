"""Building blocks of the synthetic demo images: rigid transforms, smooth noise and fields, resampling.

Shared by the brain (:mod:`~mfassl_medical.demo_data.brain`) and chest (:mod:`~mfassl_medical.demo_data.chest`)
builders. Every random draw comes from the ``numpy.random.Generator`` passed in, so a build is deterministic
by seed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rigid_matrix", "smooth_field", "smooth_noise", "resample", "index_grid"]


def rigid_matrix(angles_deg: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """Homogeneous ``(D+1, D+1)`` rigid transform ``x -> R x + t``.

    Args:
        angles_deg: one angle (2D) or three (3D: about x, then y, then z; ``R = Rz Ry Rx``).
        translation: ``(D,)``.
    """
    t = np.asarray(translation, dtype=np.float64)
    d = t.size
    m = np.eye(d + 1)
    a = [math.radians(v) for v in angles_deg]
    if d == 2:
        c, s = math.cos(a[0]), math.sin(a[0])
        m[:2, :2] = [[c, -s], [s, c]]
    elif d == 3:
        cx, sx, cy, sy, cz, sz = (math.cos(a[0]), math.sin(a[0]), math.cos(a[1]), math.sin(a[1]),
                                  math.cos(a[2]), math.sin(a[2]))
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        m[:3, :3] = rz @ ry @ rx
    else:
        raise ValueError(f"translation must have 2 or 3 components, got {d}.")
    m[:d, d] = t
    return m


def smooth_field(rng: np.random.Generator, shape: Sequence[int], strength: float, coarse: int = 3) -> torch.Tensor:
    """A smooth multiplicative field ``exp(strength * noise)`` of ``shape`` from a ``coarse``-point random grid."""
    return torch.exp(strength * smooth_noise(rng, shape, coarse))


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], coarse: int = 3, channels: int = 0) -> torch.Tensor:
    """Smooth standard-normal-ish noise: a ``coarse``-point random grid upsampled to ``shape``.

    Returns:
        ``shape`` (``channels = 0``) or ``(channels, *shape)``.
    """
    c = max(channels, 1)
    grid = torch.as_tensor(rng.standard_normal((1, c) + (int(coarse),) * len(shape)), dtype=torch.float32)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    f = F.interpolate(grid, size=tuple(int(s) for s in shape), mode=mode, align_corners=True)[0]
    return f if channels else f[0]


def resample(vols: torch.Tensor, coords: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``(C, *S)`` at continuous index coordinates ``(*S', D)`` (index order as ``S``), linear."""
    d = coords.shape[-1]
    size = torch.tensor([float(s) for s in vols.shape[1:]])
    norm = 2.0 * coords / (size - 1.0) - 1.0
    grid = norm.flip(-1)[None]  # grid_sample wants (x, y[, z]) = the last index first
    if d != vols.ndim - 1:
        raise ValueError(f"coordinates have {d} components for a volume of {vols.ndim - 1} spatial dims.")
    return F.grid_sample(vols[None], grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)[0]


def index_grid(shape: Sequence[int]) -> torch.Tensor:
    """``(*shape, D)`` float index coordinates."""
    return torch.stack(torch.meshgrid(*[torch.arange(int(s), dtype=torch.float32) for s in shape], indexing="ij"),
                       dim=-1)
