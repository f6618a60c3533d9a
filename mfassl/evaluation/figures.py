"""PNG figures of an evaluation: ROC curves, reliability diagrams and MFA gate maps over their images."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mfassl.files import save_figure

__all__ = ["roc_curve", "reliability_bins", "plot_roc", "plot_reliability", "plot_gate_maps"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(false positive rates, true positive rates)`` over every threshold, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the end of each run of tied scores
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / max(1, y.sum())]
    fpr = np.r_[0.0, fp / max(1, (~y).sum())]
    return fpr, tpr


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of predicted probability: ``(mean prediction, observed frequency, count)``."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = (np.asarray(labels).ravel() > 0).astype(np.float64)
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y, minlength=n_bins) / count
    return mean_p, freq, count


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> Path:
    """One ROC curve per entry ``name: (scores, labels)``, with its AUROC in the legend."""
    from mfassl.evaluation.metrics import auroc

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for name, (scores, labels) in curves.items():
        if len(np.unique(np.asarray(labels) > 0)) < 2:
            continue
        fpr, tpr = roc_curve(scores, labels)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUROC {auroc(scores, labels):.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("ROC")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_reliability(probs: np.ndarray, labels: np.ndarray, path: str | os.PathLike, n_bins: int = 15) -> Path:
    """Reliability diagram (observed frequency against mean prediction per bin) with the ECE in the title."""
    from mfassl.evaluation.metrics import ece

    plt = _plt()
    mean_p, freq, count = reliability_bins(probs, labels, n_bins)
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.4, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    ok = count > 0
    ax.plot(mean_p[ok], freq[ok], marker="o", lw=1.5)
    ax.set_ylabel("observed frequency")
    ax.set_title(f"reliability (ECE {ece(probs, labels, n_bins):.3f}, {n_bins} bins)", fontsize=10)
    edges = np.linspace(0, 1, n_bins + 1)
    axh.bar(edges[:-1], count, width=1.0 / n_bins, align="edge", color="0.6")
    axh.set_xlabel("predicted probability")
    axh.set_ylabel("count")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


def _display(image: torch.Tensor) -> np.ndarray:
    """A 2D grey image of a ``(C, H, W)`` or ``(C, X, Y, Z)`` tensor (first channel; 3D: the middle axial slice)."""
    img = image[0].float()
    if img.ndim == 3:
        img = img[:, :, img.shape[2] // 2]
    img = img.cpu().numpy()
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def plot_gate_maps(images: torch.Tensor, gates: torch.Tensor, grid: Sequence[int], path: str | os.PathLike,
                   max_items: int = 4) -> Path:
    """Each image (2D, or the middle axial slice of 3D) with its MFA gate map upsampled over it.

    Args:
        images: ``(B, C, H, W)`` or ``(B, C, X, Y, Z)`` (the left halves of the mirror pairs).
        gates: ``(B, N)`` gates on the token grid ``grid`` (``N = prod(grid)``).
        grid: the MFA layer's token grid.
        path: the PNG.
        max_items: at most this many panels.
    """
    plt = _plt()
    b = min(int(images.shape[0]), int(max_items))
    grid = tuple(int(g) for g in grid)
    g = gates[:b].float().reshape(b, 1, *grid)
    size = tuple(images.shape[2:])
    g = F.interpolate(g, size=size, mode="nearest")
    origin = "lower" if images.ndim == 5 else "upper"  # 3D: RAS axial slice; 2D: image rows go down
    fig, axes = plt.subplots(1, b, figsize=(2.6 * b, 2.8), squeeze=False)
    for i in range(b):
        ax = axes[0, i]
        ax.imshow(_display(images[i]).T, cmap="gray", origin=origin)
        gm = g[i, 0]
        gm = gm[:, :, gm.shape[2] // 2] if gm.ndim == 3 else gm
        im = ax.imshow(gm.cpu().numpy().T, cmap="magma", alpha=0.45, vmin=0.0, vmax=max(1e-3, float(g.max())),
                       origin=origin)
        ax.set_title(f"gate mean {float(gates[i].float().mean()):.3f}", fontsize=8)
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)
