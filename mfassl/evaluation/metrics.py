"""Binary classification metrics on numpy arrays, one label at a time, and a multi-label report with
bootstrap confidence intervals.

``probs``/``scores`` are ``(N,)`` probabilities (or scores) of the positive class, ``labels`` ``(N,)`` in
{0, 1}. AUPRC comes from MONAI (``compute_average_precision``); AUROC is the rank statistic (the value of
MONAI's ``compute_roc_auc``, tested against it, without its per-sample Python loop); the rest are written
here. ECE is the top-label calibration error of a binary classifier: the confidence of a
prediction is ``max(p, 1 - p)``, it is correct when ``(p >= 0.5) == label``, and ``|accuracy - confidence|``
is averaged over 15 equal-width confidence bins weighted by their share of samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mfassl.evaluation.bootstrap import bootstrap_indices

__all__ = ["METRICS", "auroc", "resampled_auroc", "auprc", "f1", "nll", "ece", "brier", "flip_consistency",
           "classification_report"]


def _binary(labels: np.ndarray) -> np.ndarray:
    return (np.asarray(labels, dtype=np.float64).ravel() > 0).astype(np.float64)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic over ``n_pos * n_neg``, from the scores' average
    ranks (ties count 1/2, the value of MONAI's ``compute_roc_auc`` and scikit-learn's ``roc_auc_score``);
    NaN if one class is absent or a score is NaN. Vectorised (``O(N log N)`` in numpy): bootstrap intervals
    call it thousands of times, where MONAI's per-sample Python loop took most of their time."""
    y = _binary(labels) > 0
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.size} scores for {y.size} labels.")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(s).any():
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = float(mean_rank[inverse.ravel()][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def resampled_auroc(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """:func:`auroc` of every bootstrap resample at once: ``(B,)`` values, value ``b`` that of
    ``auroc(scores[idx[b]], labels[idx[b]])``.

    A resample is the original rows with multiplicities, so its Mann-Whitney statistic is a weighted sum over
    the distinct scores: each positive copy counts the negative copies below its score, and half of those tied
    with it. The scores are sorted once and each resample costs ``O(N)`` (no sort per resample), which is
    what makes intervals over thousands of resamples, seeds and subsets cheap.

    Args:
        scores: ``(N,)`` scores.
        labels: ``(N,)`` 0/1 (or >0) labels.
        idx: ``(B, N')`` row indices of the resamples (:func:`~mfassl.evaluation.bootstrap_indices`).

    Returns:
        ``(B,)`` AUROCs; NaN where a resample lacks a class or draws a NaN score.
    """
    y = _binary(labels) > 0
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"resampled_auroc: {s.size} scores for {y.size} labels.")
    idx = np.asarray(idx)
    b, n = idx.shape[0], s.size
    counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
    bad = np.isnan(s)
    drew_nan = (counts[:, bad] > 0).any(axis=1)
    order = np.lexsort((np.where(bad, 0.0, s), bad))  # NaN rows last, after any +inf score
    ordered, copies, positive = s[order], counts[:, order], y[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first row of each distinct score
    pos = np.add.reduceat(copies * positive, starts, axis=1)  # (B, G) positive copies per score
    neg = np.add.reduceat(copies * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0) | drew_nan] = np.nan
    return out


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (MONAI's ``compute_average_precision``); NaN without positives."""
    from monai.metrics import compute_average_precision

    y = _binary(labels)
    if y.size == 0 or y.sum() == 0:
        return float("nan")
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64).ravel())
    return float(compute_average_precision(s, torch.as_tensor(y)))


def f1(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the predictions ``probs >= threshold``; NaN when there are neither positives nor predicted ones."""
    y = _binary(labels) > 0
    pred = np.asarray(probs, dtype=np.float64).ravel() >= threshold
    tp = float(np.sum(pred & y))
    denom = 2 * tp + float(np.sum(pred & ~y)) + float(np.sum(~pred & y))
    return float("nan") if denom == 0 else 2 * tp / denom


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (negative log-likelihood, nats) with probabilities clipped to [eps, 1-eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    y = _binary(labels)
    if p.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins (module docstring)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = _binary(labels) > 0
    if p.size == 0:
        return float("nan")
    conf = np.maximum(p, 1.0 - p)
    correct = (p >= 0.5) == y
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.sum() / p.size * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of the positive-class probability."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    return float(np.mean((p - _binary(labels)) ** 2))


def flip_consistency(probs: np.ndarray, probs_flipped: np.ndarray, swap: bool = False,
                     threshold: float = 0.5) -> float:
    """Share of images whose thresholded prediction agrees with that of their mirror image.

    Args:
        probs: ``(N,)`` predictions on the images.
        probs_flipped: ``(N,)`` predictions on their mirror images.
        swap: the label is lateralised (left/right): the mirror image's prediction must be the opposite one,
            so it is compared with ``1 - probs_flipped``.
        threshold: the decision threshold.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    q = np.asarray(probs_flipped, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    if swap:
        q = 1.0 - q
    return float(np.mean((p >= threshold) == (q >= threshold)))


#: The metrics :func:`classification_report` computes, by name: ``fn(probs, labels)``.
METRICS = {"auroc": auroc, "auprc": auprc, "f1": f1, "nll": nll, "ece": ece, "brier": brier}


def _interval(value: float, samples: list[float], alpha: float) -> dict[str, float]:
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {"value": value, "ci_low": float("nan"), "ci_high": float("nan")}
    lo, hi = np.percentile(s, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"value": value, "ci_low": float(lo), "ci_high": float(hi)}


def _label_metrics(p: np.ndarray, y: np.ndarray, pf: np.ndarray | None, swap: bool) -> dict[str, float]:
    keep = np.isfinite(y)
    out = {name: fn(p[keep], y[keep]) if keep.any() else float("nan") for name, fn in METRICS.items()}
    if pf is not None:
        out["flip_consistency"] = flip_consistency(p[keep], pf[keep], swap=swap) if keep.any() else float("nan")
    return out


def classification_report(probs: np.ndarray, labels: np.ndarray, probs_flipped: np.ndarray | None = None,
                          names: Sequence[str] | None = None, swap: Sequence[bool] | None = None,
                          n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Every metric of every label and their macro average, each with a percentile bootstrap interval.

    Args:
        probs: ``(N, K)`` (or ``(N,)``) positive-class probabilities of K binary labels.
        labels: ``(N, K)`` in {0, 1}; NaN marks a label not used for that row (uncertain, missing,
            undefined) and leaves the row out of that label's metrics.
        probs_flipped: ``(N, K)`` predictions on the mirror images; adds ``flip_consistency``.
        names: label names (default ``label0``, ``label1``, ...).
        swap: per label, True when it is lateralised (see :func:`flip_consistency`).
        n_boot, alpha, seed: the bootstrap: rows are resampled once per replicate and every label and the
            macro average are computed on the same resample.

    Returns:
        ``{"per_label": {name: {metric: {"value", "ci_low", "ci_high"}}}, "macro": {metric: {...}}}``; the
        macro value is the NaN-ignoring mean over labels.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    p = p[:, None] if p.ndim == 1 else p
    y = y[:, None] if y.ndim == 1 else y
    pf = None if probs_flipped is None else np.asarray(probs_flipped, dtype=np.float64)
    if pf is not None and pf.ndim == 1:
        pf = pf[:, None]
    if p.shape != y.shape or (pf is not None and pf.shape != p.shape):
        raise ValueError(f"probs {p.shape}, labels {y.shape} and probs_flipped "
                         f"{None if pf is None else pf.shape} must have one shape (N, K).")
    k = p.shape[1]
    names = list(names) if names is not None else [f"label{i}" for i in range(k)]
    swap = [False] * k if swap is None else [bool(s) for s in swap]
    if len(names) != k or len(swap) != k:
        raise ValueError(f"{k} labels but {len(names)} names and {len(swap)} swap flags.")

    def compute(rows: np.ndarray | slice) -> list[dict[str, float]]:
        return [_label_metrics(p[rows, j], y[rows, j], None if pf is None else pf[rows, j], swap[j])
                for j in range(k)]

    def macro(per: list[dict[str, float]]) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {m: float(np.nanmean([d[m] for d in per])) if any(np.isfinite(d[m]) for d in per)
                    else float("nan") for m in per[0]}

    point = compute(slice(None))
    point_macro = macro(point)
    samples = [[{m: [] for m in point[0]} for _ in range(k)], {m: [] for m in point[0]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for idx in bootstrap_indices(len(p), n_boot, seed):
            per = compute(idx)
            for j in range(k):
                for m, v in per[j].items():
                    samples[0][j][m].append(v)
            for m, v in macro(per).items():
                samples[1][m].append(v)
    return {
        "per_label": {names[j]: {m: _interval(point[j][m], samples[0][j][m], alpha) for m in point[j]}
                      for j in range(k)},
        "macro": {m: _interval(point_macro[m], samples[1][m], alpha) for m in point_macro},
    }
