"""Percentile bootstrap confidence intervals over the rows (images, patients) of paired arrays."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_indices", "bootstrap_ci", "percentile_interval"]


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` row indices drawn with replacement (deterministic given ``seed``)."""
    if n <= 0:
        raise ValueError("cannot bootstrap an empty sample.")
    return np.random.default_rng(seed).integers(0, n, size=(int(n_boot), int(n)))


def bootstrap_ci(stat: Callable[..., float], *arrays: np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap over the first axis, resampling all ``arrays`` together.

    Args:
        stat: function of the arrays returning a float (e.g. :func:`~mfassl.evaluation.auroc`).
        arrays: arrays with the same first dimension ``N``.
        n_boot: resamples.
        alpha: 1 - coverage (0.05 gives a 95% interval).
        seed: resampling seed.

    Returns:
        ``(estimate on all data, lower, upper)``; resamples where ``stat`` is NaN (one class left, say) are
        ignored, and the interval is NaN when all are, or when there are no rows (the estimate is then
        whatever ``stat`` gives on the empty arrays).
    """
    arrs = [np.asarray(a) for a in arrays]
    if not arrs:
        raise ValueError("bootstrap_ci needs at least one array.")
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrs]}.")
    point = float(stat(*arrs))
    if n == 0:
        return point, float("nan"), float("nan")
    idx = bootstrap_indices(n, n_boot, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.array([stat(*[a[i] for a in arrs]) for i in idx], dtype=np.float64)
    return percentile_interval(point, values, alpha)


def percentile_interval(point: float, values: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """``(point, lower, upper)`` from the statistic's ``(n_boot,)`` resampled ``values``: their ``alpha / 2`` and
    ``1 - alpha / 2`` percentiles, non-finite values ignored (NaN bounds when none is finite)."""
    values = np.array(values, dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    if np.isnan(values).all():
        return float(point), float("nan"), float("nan")
    lo, hi = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(point), float(lo), float(hi)
