"""Coarse exhaustive search for a symmetry hyperplane by FFT self-convolution.

For every candidate normal ``n`` (a grid of directions within ``max_angle`` of a prior), the
coarse image is resampled (nearest neighbour) onto a small isotropic grid whose first axis runs
along ``n``. Mirror symmetry about ``u = u0`` along that axis means ``f(u) = f(2 u0 - u)``, so the
correlation of the image with its reflection for *every* offset at once is the self-convolution
of each grid line, summed over lines: one batched real FFT per candidate set. Overlap-normalised
sums turn it into a normalised cross-correlation (NCC) per (normal, offset).

Two options make the score robust on radiographs, where a single lung, a one-sided opacity or the
body outline can match itself better than the whole chest does:

- ``values``: the search can compare locally contrast-normalised images (:func:`local_contrast`)
  instead of raw intensities, so that a large smooth density change on one side (an opacity whitening
  a lung, a bias field) no longer dominates the correlation; edges (ribs, spine, heart and lung borders)
  decide.
- ``coverage``: the NCC of a pairing is multiplied by ``coverage_share ** coverage``, the share of the
  sampled field of view that has its mirror partner inside the field of view. A line through one lung
  pairs only a strip of the image with itself; without this factor its overlap-normalised NCC can beat
  the true midline's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy.ndimage import gaussian_filter, map_coordinates

from mfassl.geometry import rotation_between

from ._prepare import Level

__all__ = ["CoarseResult", "candidate_frames", "region_of_interest", "local_contrast", "coarse_search",
           "symmetry_score", "tangent_basis"]


@dataclass
class CoarseResult:
    """Best coarse hyperplane ``normal . x = offset`` (world), its ``score`` (NCC times the coverage
    factor) and ``coverage`` (share of the sampled field of view with its mirror partner inside it)."""

    normal: np.ndarray
    offset: float
    score: float
    candidates: int
    coverage: float = 1.0


def tangent_basis(n: np.ndarray) -> np.ndarray:
    """``(D-1, D)`` orthonormal rows spanning the complement of the unit vector ``n`` (deterministic)."""
    d = n.size
    if d == 2:
        return np.array([[-n[1], n[0]]])
    a = np.zeros(3)
    a[int(np.argmin(np.abs(n)))] = 1.0
    t1 = np.cross(n, a)
    t1 /= np.linalg.norm(t1)
    t2 = np.cross(n, t1)
    return np.stack([t1, t2])


def candidate_frames(n0: np.ndarray, max_angle: float, step: float) -> np.ndarray:
    """``(B, D, D)`` orthonormal frames whose first column is a candidate normal.

    2D: normals at angles ``-max_angle..max_angle`` (degrees) by ``step`` from ``n0``; 3D: a square
    grid of tilts about the two tangent directions of ``n0``, kept within the ``max_angle`` cone.
    The grid is symmetric about ``n0`` (so a mirrored image gets the mirrored grid).
    """
    d = n0.size
    t = tangent_basis(n0)
    k = int(math.floor(max_angle / step + 1e-9))
    angles = np.radians(np.arange(-k, k + 1) * step)
    base = np.concatenate([n0[:, None], t.T], axis=1)  # (D, D) columns n0, t...
    frames = []
    if d == 2:
        for a in angles:
            n = math.cos(a) * n0 + math.sin(a) * t[0]
            frames.append(np.stack([n, np.array([-n[1], n[0]])], axis=1))
    else:
        for a in angles:
            for b in angles:
                if math.hypot(a, b) > math.radians(max_angle) + 1e-9:
                    continue
                n = n0 + math.tan(a) * t[0] + math.tan(b) * t[1]
                n /= np.linalg.norm(n)
                frames.append(rotation_between(n0, n) @ base)
    return np.stack(frames)


def region_of_interest(level: Level, use_foreground: bool) -> tuple[np.ndarray, float]:
    """World centre ``(D,)`` and radius (mm) of the region the coarse search looks at.

    With ``use_foreground`` (volumes) the region is the object: voxels that differ clearly from the
    border intensity, centre their centroid, radius from their spread. Otherwise (radiographs) the
    field of view: its centre and half its largest side.
    """
    v = level.data
    d = v.ndim
    aff = level.affine
    shape = np.array(v.shape)
    fov_centre = aff[:d, :d] @ ((shape - 1) / 2.0) + aff[:d, d]
    half_sides = 0.5 * (shape - 1) * level.spacing
    if use_foreground:
        border = np.concatenate([np.take(v, [0, -1], axis=k).ravel() for k in range(d)])
        a = np.abs(v - np.median(border))
        hi = float(np.percentile(a, 99.5))
        if hi > 0:
            mask = a > 0.15 * hi
            if mask.sum() >= 4 ** d:
                idx = np.argwhere(mask).astype(np.float64)
                pts = idx @ aff[:d, :d].T + aff[:d, d]
                c = pts.mean(axis=0)
                lam = np.linalg.eigvalsh(np.cov((pts - c).T))
                r = 1.15 * math.sqrt(3.0 * max(float(lam.max()), 0.0))
                return c, float(min(max(r, 4.0 * level.spacing.max()), np.linalg.norm(half_sides)))
    return fov_centre, float(half_sides.max())


def local_contrast(data: np.ndarray, spacing: np.ndarray, sigma: float) -> np.ndarray:
    """Locally contrast-normalised copy of ``data`` ``(*S)``: ``(v - mean) / (std + 0.1 * mean std)``.

    Mean and standard deviation are Gaussian-weighted with ``sigma`` in units of the geometric-mean
    spacing (``sigma / spacing_k * h`` voxels along dim ``k``), so the window is isotropic in world units.
    The floor ``0.1 * mean std`` keeps flat regions (background, a fully opaque lung) near zero instead of
    amplifying their noise. Returns a float32 array of the same shape.
    """
    v = data.astype(np.float64)
    h = float(np.exp(np.mean(np.log(spacing))))
    s = [float(sigma) * h / float(sp) for sp in spacing]
    m = gaussian_filter(v, s, mode="nearest")
    dev = v - m
    sd = np.sqrt(np.maximum(gaussian_filter(dev * dev, s, mode="nearest"), 0.0))
    return (dev / (sd + 0.1 * float(sd.mean()) + 1e-12)).astype(np.float32)


def _sample(level: Level, frames: np.ndarray, centre: np.ndarray, radius: float,
            h: float, values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Nearest-neighbour samples ``(B, L, P)`` (values, in-FOV mask) on each candidate's grid.

    ``values`` ``(*S)``: what to sample on ``level``'s grid (default: ``level.data``).
    """
    v = level.data if values is None else values
    d = v.ndim
    half = int(math.ceil(radius / h))
    length = 2 * half + 1
    g = np.arange(length, dtype=np.float64) - half
    lines = np.stack(np.meshgrid(*([g] * (d - 1)), indexing="ij"), axis=-1).reshape(-1, d - 1)
    lines = lines[np.linalg.norm(lines, axis=1) <= half + 0.5]  # lines inside the ball only
    mesh = np.concatenate([np.repeat(g, len(lines))[:, None], np.tile(lines, (length, 1))], axis=1)  # (L*P, D)
    inv = level.inv
    m = (np.einsum("ij,bjk->bik", inv[:d, :d], frames) * h).astype(np.float32)  # (B, D, D) grid step -> index
    o = inv[:d, :d] @ centre + inv[:d, d]  # (D,)
    mesh32 = mesh.astype(np.float32)
    shape = v.shape
    flat = None
    valid = None
    for k in range(d):
        ik = np.rint(mesh32 @ m[:, k, :].T + np.float32(o[k])).astype(np.int32).T  # (B, P_all)
        ok = (ik >= 0) & (ik < shape[k])
        valid = ok if valid is None else valid & ok
        np.clip(ik, 0, shape[k] - 1, out=ik)
        flat = ik if flat is None else flat * np.int32(shape[k]) + ik
    vals = np.take(v.ravel(), flat)
    vals *= valid
    b = frames.shape[0]
    f = vals.reshape(b, length, -1)
    mk = valid.astype(np.float32).reshape(b, length, -1)
    return f, mk, half


def coarse_search(level: Level, n0: np.ndarray, max_angle: float, step: float, use_foreground: bool,
                  min_overlap: float = 0.5, max_shift: float = 0.5,
                  max_half: int | None = None, top_k: int = 1, values: np.ndarray | None = None,
                  coverage: float = 0.0) -> CoarseResult | list[CoarseResult]:
    """Best (normal, offset) on ``level`` by batched FFT self-convolution NCC.

    Args:
        level: the coarse pyramid level.
        n0: ``(D,)`` prior unit normal (world).
        max_angle, step: candidate directions (degrees) around ``n0``.
        use_foreground: region of interest from the object (volumes) or the field of view.
        min_overlap: smallest in-FOV overlap of a mirror pairing, as a fraction of the in-FOV samples.
        max_shift: largest distance of the hyperplane from the region centre, as a fraction of its radius.
        max_half: at most this many grid steps from the centre to the edge of the sampling grid
            (None: the level's spacing sets the step).
        top_k: 1 returns the best :class:`CoarseResult`; more returns a list of up to ``top_k``, best
            first, whose directions are more than ``1.5 * step`` degrees apart (starts for a multi-start
            refinement, so that a wrong coarse peak on a coarse grid is not the only start).
        values: ``(*S)`` what is compared on ``level``'s grid, e.g. its :func:`local_contrast` image
            (None: the raw intensities ``level.data``).
        coverage: exponent of the coverage factor (0: plain NCC).
    """
    centre, radius = region_of_interest(level, use_foreground)
    h = float(np.exp(np.mean(np.log(level.spacing))))
    if max_half is not None:
        h = max(h, radius / max_half)
    frames = candidate_frames(n0, max_angle, step)
    f, mk, half = _sample(level, frames, centre, radius, h, values)
    length = 2 * half + 1
    nfft = 2 * length
    # centre the intensities (NCC below is exact for any shift; this only helps float32 precision)
    mean = float((f * mk).sum() / max(float(mk.sum()), 1.0))
    fm = ((f - np.float32(mean)) * mk).transpose(0, 2, 1).copy()  # (B, P, L): FFT along the contiguous dim
    mt = mk.transpose(0, 2, 1).copy()
    spec_f = sfft.rfft(fm, n=nfft, axis=2, workers=1)
    spec_m = sfft.rfft(mt, n=nfft, axis=2, workers=1)
    spec_q = sfft.rfft(fm * fm, n=nfft, axis=2, workers=1)
    c_ff = sfft.irfft(np.einsum("bpf,bpf->bf", spec_f, spec_f), n=nfft, axis=1)
    c_fm = sfft.irfft(np.einsum("bpf,bpf->bf", spec_f, spec_m), n=nfft, axis=1)
    c_qm = sfft.irfft(np.einsum("bpf,bpf->bf", spec_q, spec_m), n=nfft, axis=1)
    c_mm = sfft.irfft(np.einsum("bpf,bpf->bf", spec_m, spec_m), n=nfft, axis=1)
    count = np.maximum(c_mm, 1.0)
    mu = c_fm / count
    var = c_qm / count - mu * mu
    cov = c_ff / count - mu * mu
    ncc = cov / np.maximum(var, 1e-12)
    u0 = np.arange(nfft) / 2.0 - half  # plane position along the normal, in grid steps from the centre
    total = mk.sum(axis=(1, 2))[:, None]
    ok = (c_mm >= min_overlap * total) & (np.abs(u0) <= max_shift * half)[None] & (var > 1e-12)
    share = np.clip(c_mm / np.maximum(total, 1.0), 0.0, 1.0)
    if coverage:
        ncc = ncc * share ** float(coverage)
    ncc = np.where(ok, ncc, -2.0)
    per_dir = ncc.argmax(axis=1)
    scores = ncc[np.arange(len(ncc)), per_dir]
    picked: list[CoarseResult] = []
    min_cos = math.cos(math.radians(1.5 * step))
    for b in np.argsort(-scores, kind="stable"):
        n = frames[b][:, 0]
        if any(abs(float(n @ c.normal)) > min_cos for c in picked):
            continue
        offset = float(n @ centre + float(u0[per_dir[b]]) * h)
        picked.append(CoarseResult(normal=n, offset=offset, score=float(scores[b]), candidates=int(frames.shape[0]),
                                   coverage=float(share[b, per_dir[b]])))
        if len(picked) >= max(1, int(top_k)):
            break
    return picked[0] if top_k == 1 else picked


def symmetry_score(level: Level, values: np.ndarray, normal: np.ndarray, offset: float,
                   coverage: float = 0.0) -> tuple[float, float]:
    """The coarse search's score of one hyperplane ``normal . x = offset`` (world), off the search grid.

    Every voxel of ``level`` is reflected about the hyperplane and ``values`` ``(*S)`` is read there
    (linear interpolation); the score is the NCC of ``values`` with its reflection over the voxels whose
    mirror lies inside the field of view, times ``share ** coverage`` (``share``: their fraction of all
    voxels). Returns ``(score, share)``; ``(-1, share)`` when fewer than ``2 ** D`` voxels pair up.
    """
    d = level.data.ndim
    shape = np.asarray(level.data.shape)
    idx = np.stack(np.meshgrid(*[np.arange(k, dtype=np.float64) for k in shape], indexing="ij"), -1).reshape(-1, d)
    aff, inv = level.affine, level.inv
    x = idx @ aff[:d, :d].T + aff[:d, d]
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    y = x - 2.0 * (x @ n - float(offset))[:, None] * n
    j = y @ inv[:d, :d].T + inv[:d, d]
    ok = np.all((j >= 0.0) & (j <= shape - 1), axis=1)
    share = float(ok.mean())
    if int(ok.sum()) < 2 ** d:
        return -1.0, share
    a = values.reshape(-1)[ok].astype(np.float64)
    b = map_coordinates(values, j[ok].T, order=1, mode="nearest").astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    ncc = float(a @ b) / den if den > 0 else 0.0
    return ncc * (share ** float(coverage) if coverage else 1.0), share
