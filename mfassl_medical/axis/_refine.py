"""Gauss-Newton refinement of a symmetry hyperplane on an image pyramid.

Model: for sample points ``x_i`` (world, mm) and the reflection ``R x = x - 2 (n.x - d) n``,

    I(x_i) = a + s(x_i) * I(R x_i) + noise,    s(x) = sum_j c_j phi_j(x)

with ``phi`` a polynomial of degree ``bias_order`` in the centred coordinates. ``s`` absorbs a
smooth multiplicative bias field that differs between the two sides (the log-ratio of a smooth
bias and its mirror is smooth and vanishes on the plane); ``a`` absorbs an intensity offset, so an
inverted grey scale (MONOCHROME1) fits as well as the normal one. The residuals are weighted with
Tukey's biweight on a robust (MAD) scale, which removes lesions, text markers, zeroed slices and
the heart's asymmetry from the fit. Plane and intensity parameters are solved jointly
(Levenberg-Marquardt damped Gauss-Newton). Points are the voxels with the strongest gradient;
on a fine level too large to differentiate cheaply they are the children of the strongest voxels
of the next coarser level. Values and gradients come from one (bi/tri)linear interpolation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ._prepare import Level
from ._search import tangent_basis

__all__ = ["interpolate", "select_points", "RefineResult", "refine_level", "bias_basis"]


def interpolate(vol: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation with its gradient.

    Args:
        vol: ``(*S)`` array, every dim >= 2.
        idx: ``(N, D)`` continuous index coordinates.

    Returns:
        values ``(N,)``, index-space gradient ``(N, D)``, in-bounds mask ``(N,)`` (values of
        out-of-bounds points are those of the nearest border cell).
    """
    d = vol.ndim
    shape = np.asarray(vol.shape)
    valid = np.all((idx >= 0.0) & (idx <= shape - 1), axis=1)
    i0 = np.clip(np.floor(idx).astype(np.int64), 0, shape - 2)
    f = np.clip(idx - i0, 0.0, 1.0)
    strides = np.array([int(np.prod(shape[k + 1:])) for k in range(d)], dtype=np.int64)
    base = i0 @ strides
    flat = vol.ravel()
    # corners in binary order (dim 0 most significant), then linear interpolation dim by dim from
    # the last, carrying the derivatives along the dims already reduced
    cur: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for corner in itertools.product((0, 1), repeat=d):
        cur.append((flat[base + int(np.dot(corner, strides))].astype(np.float64), []))
    for k in range(d - 1, -1, -1):
        fk = f[:, k]
        nxt = []
        for j in range(0, len(cur), 2):
            (v0, g0), (v1, g1) = cur[j], cur[j + 1]
            diff = v1 - v0
            nxt.append((v0 + fk * diff, [diff] + [a + fk * (b - a) for a, b in zip(g0, g1)]))
        cur = nxt
    val, grads = cur[0]
    return val, np.stack(grads, axis=1), valid


def _gradient_magnitude(level: Level) -> np.ndarray:
    sp = level.spacing
    grads = np.gradient(level.data, *sp)
    out = grads[0] * grads[0]
    for g in grads[1:]:
        out += g * g
    return out


def select_points(level: Level, n_points: int, margin: int = 1) -> np.ndarray:
    """``(N, D)`` integer indices of the ``n_points`` voxels with the largest gradient magnitude
    (a ``margin``-voxel border excluded), sorted in memory order."""
    gm = _gradient_magnitude(level)
    inner = tuple(slice(margin, s - margin) for s in gm.shape)
    sub = gm[inner]
    n = min(n_points, sub.size)
    flat = sub.ravel()
    if n < flat.size:
        part = np.argpartition(-flat, n - 1)[:n]
    else:
        part = np.arange(flat.size)
    part.sort()
    idx = np.stack(np.unravel_index(part, sub.shape), axis=1) + margin
    return idx


def children(idx: np.ndarray, rel: tuple[int, ...]) -> np.ndarray:
    """Indices on the finer level of every voxel inside the coarse blocks ``idx`` ``(N, D)``."""
    offs = np.array(list(itertools.product(*[range(r) for r in rel])), dtype=np.int64)  # (K, D)
    out = idx[:, None, :] * np.asarray(rel) + offs[None]
    return out.reshape(-1, idx.shape[1])


def bias_basis(x: np.ndarray, order: int, scale: float) -> np.ndarray:
    """``(N, K)`` polynomial basis of degree ``order`` (0, 1 or 2) in the centred points ``x`` ``(N, D)``."""
    cols = [np.ones(x.shape[0])]
    y = x / scale
    d = x.shape[1]
    if order >= 1:
        cols += [y[:, k] for k in range(d)]
    if order >= 2:
        cols += [y[:, i] * y[:, j] for i in range(d) for j in range(i, d)]
    return np.stack(cols, axis=1)


@dataclass
class RefineResult:
    """Refined hyperplane ``normal . (x - centre) = offset`` and fit statistics.

    ``inlier_fraction`` is the share of the compared points (those whose mirror image lies inside the
    field of view) that keep a non-zero Tukey weight; ``coverage`` is the share of all sample points
    that could be compared (mirror image inside the field of view).
    """

    normal: np.ndarray
    offset: float
    correlation: float
    iterations: int
    points: int
    inlier_fraction: float
    coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    coverage: float = 1.0


def _tukey(r: np.ndarray, scale: float, c: float = 4.685) -> np.ndarray:
    u = r / (c * max(scale, 1e-12))
    w = (1.0 - u * u) ** 2
    w[np.abs(u) >= 1.0] = 0.0
    return w


def refine_level(level: Level, pts_index: np.ndarray, normal: np.ndarray, offset: float, centre: np.ndarray,
                 coef: np.ndarray | None, bias_order: int, max_iter: int, max_step_deg: float = 3.0,
                 tol_deg: float = 2e-3, robust: bool = True) -> RefineResult:
    """Damped Gauss-Newton on one level.

    Args:
        level: the pyramid level (values and affine).
        pts_index: ``(N, D)`` sample points as index coordinates of ``level`` (usually on-grid).
        normal, offset: start hyperplane ``normal . (x - centre) = offset`` (world, centred).
        centre: ``(D,)`` world point the offset and the bias polynomial are relative to.
        coef: intensity parameters ``[a, c_0, ..., c_K]`` from the previous level, or None.
        bias_order: degree of the multiplicative polynomial (0: a constant gain).
        max_iter: iteration cap; stops early when the update is below ``tol_deg`` / 1e-3 voxel.
        max_step_deg: cap on one angular update (the offset step is capped at 2 voxels).
        robust: Tukey weights (False: plain least squares).
    """
    d = level.data.ndim
    aff, inv = level.affine, level.inv
    a_lin, a_t = aff[:d, :d], aff[:d, d]
    i_lin, i_t = inv[:d, :d], inv[:d, d]
    vol = level.data
    h = float(np.exp(np.mean(np.log(level.spacing))))
    x = pts_index.astype(np.float64) @ a_lin.T + a_t - centre  # (N, D) centred world
    fixed, _, fvalid = interpolate(vol, pts_index.astype(np.float64))
    scale = float(np.sqrt(np.mean(np.sum(x * x, axis=1)))) or 1.0
    phi = bias_basis(x, bias_order, scale)  # (N, K)
    k = phi.shape[1]
    if coef is None or coef.size != k + 1:
        coef = np.zeros(k + 1)
        coef[1] = 1.0
    n = normal / np.linalg.norm(normal)
    dd = float(offset)
    it = 0
    w = np.ones_like(fixed)
    corr = 0.0
    pred = np.zeros_like(fixed)
    valid = fvalid
    for it in range(1, max_iter + 1):
        t = tangent_basis(n)  # (D-1, D)
        xn = x @ n - dd
        y = x - 2.0 * xn[:, None] * n
        idx = (y + centre) @ i_lin.T + i_t
        val, gidx, valid = interpolate(vol, idx)
        valid &= fvalid
        g = gidx @ i_lin  # world gradient (N, D)
        s = phi @ coef[1:]
        pred = coef[0] + s * val
        r = fixed - pred
        if valid.sum() < 4 * (k + d + 1):
            break
        sig = 1.4826 * float(np.median(np.abs(r[valid])))
        w = _tukey(r, sig) if robust and sig > 0 else np.ones_like(r)
        w = w * valid
        gn = g @ n
        gt = g @ t.T  # (N, D-1)
        xt = x @ t.T  # (N, D-1)
        jac = np.empty((x.shape[0], d + 1 + k))
        jac[:, : d - 1] = 2.0 * s[:, None] * (xt * gn[:, None] + xn[:, None] * gt)
        jac[:, d - 1] = -2.0 * s * gn
        jac[:, d] = -1.0
        jac[:, d + 1:] = -phi * val[:, None]
        jw = jac * w[:, None]
        hess = jw.T @ jac
        grad = jw.T @ r
        hess[np.diag_indices_from(hess)] *= 1.0 + 1e-6
        hess[np.diag_indices_from(hess)] += 1e-9 * (np.trace(hess) / hess.shape[0] + 1e-12)
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        ang = step[: d - 1]
        ang_norm = float(np.linalg.norm(ang))
        cap = math.radians(max_step_deg)
        if ang_norm > cap:
            ang = ang * (cap / ang_norm)
        dstep = float(np.clip(step[d - 1], -2.0 * h, 2.0 * h))
        n = n + ang @ t
        n /= np.linalg.norm(n)
        dd += dstep
        coef = coef + step[d:]
        if math.degrees(ang_norm) < tol_deg and abs(dstep) < 5e-3 * h:
            break
    sel = valid & (w > 0)
    if sel.sum() > 2:
        a, b = fixed[sel], pred[sel]
        sa, sb = float(a.std()), float(b.std())
        corr = float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb)) if sa > 0 and sb > 0 else 0.0
    inl = float((w > 0).sum() / max(1, valid.sum()))
    cov = float(valid.sum() / max(1, x.shape[0]))
    return RefineResult(normal=n, offset=dd, correlation=corr, iterations=it, points=int(x.shape[0]),
                        inlier_fraction=inl, coef=coef, coverage=cov)
