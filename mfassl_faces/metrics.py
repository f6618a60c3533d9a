"""Landmark and attribute metrics: NME, FR@t, AUC@t, CED, flip NME, AUROC, ECE, Brier, bootstrap.

Landmark errors are per face: ``NME = mean_i ||p_i - g_i|| / ||g_a - g_b||`` with ``(a, b)`` the
schema's inter-ocular points (WFLW 60 and 72, 300W 36 and 45). Over a set of faces with errors
``e_k`` and a threshold ``t`` (0.1):

- ``FR@t`` = share of faces with ``e_k > t``;
- ``AUC@t`` = area under the cumulative error distribution (CED) on ``[0, t]`` divided by ``t``,
  which equals ``mean_k max(0, t - e_k) / t`` exactly (no sampling of the curve);
- flip NME (:func:`flip_nme`) = the NME between the prediction and the un-flipped prediction on the
  mirror image: how far a landmark model is from flip equivariance. (The core's
  :func:`mfassl.evaluation.flip_consistency` is another measure: the agreement of classifier
  probabilities on an image and its mirror.)

Attribute metrics (AUROC, ECE with 15 bins, Brier) and the bootstrap are the shared core's
:mod:`mfassl.evaluation`, re-exported here for the face benchmark.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from mfassl.evaluation import auroc, bootstrap_ci, brier, ece
from mfassl.files import save_figure
from mfassl_faces.schemas import LandmarkSchema, flip_landmarks, get_schema

__all__ = [
    "nme",
    "failure_rate",
    "auc_at",
    "ced_curve",
    "plot_ced",
    "per_subset",
    "flip_nme",
    "auroc",
    "ece",
    "brier",
    "bootstrap_ci",
    "landmark_summary",
]


def nme(pred: np.ndarray, target: np.ndarray, schema: str | LandmarkSchema) -> np.ndarray:
    """Per-face NME normalised by the target's inter-ocular distance.

    Args:
        pred: ``(B, N, 2)`` predicted landmarks.
        target: ``(B, N, 2)`` ground truth.
        schema: the layout (gives the inter-ocular points).

    Returns:
        ``(B,)``.
    """
    s = get_schema(schema)
    p, g = s.check(pred), s.check(target)
    err = np.linalg.norm(p - g, axis=-1).mean(axis=-1)
    return err / np.maximum(s.inter_ocular(g), 1e-12)


def failure_rate(errors: np.ndarray, threshold: float = 0.1) -> float:
    """Share of faces whose NME exceeds ``threshold``."""
    e = np.asarray(errors, dtype=np.float64)
    return float(np.mean(e > threshold)) if e.size else float("nan")


def auc_at(errors: np.ndarray, threshold: float = 0.1) -> float:
    """Area under the CED on ``[0, threshold]``, normalised to ``[0, 1]``."""
    e = np.asarray(errors, dtype=np.float64)
    return float(np.mean(np.clip(threshold - e, 0.0, None)) / threshold) if e.size else float("nan")


def ced_curve(errors: np.ndarray, threshold: float = 0.1, steps: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """``(x, F(x))``: the share of faces with NME <= x for ``steps`` values of x in ``[0, threshold]``."""
    e = np.sort(np.asarray(errors, dtype=np.float64))
    x = np.linspace(0.0, threshold, steps)
    return x, np.searchsorted(e, x, side="right") / max(e.size, 1)


def plot_ced(curves: Mapping[str, np.ndarray], path: str | os.PathLike, threshold: float = 0.1,
             title: str = "Cumulative error distribution") -> None:
    """Save a CED plot (one line per named error array) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, errs in curves.items():
        x, y = ced_curve(errs, threshold)
        ax.plot(x, y, label=f"{name} (AUC {auc_at(errs, threshold):.3f})")
    ax.set_xlabel("NME (inter-ocular)")
    ax.set_ylabel("share of faces")
    ax.set_xlim(0, threshold)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def landmark_summary(errors: np.ndarray, threshold: float = 0.1) -> dict[str, float]:
    """``{"n", "nme", "fr", "auc"}`` of a set of per-face errors."""
    e = np.asarray(errors, dtype=np.float64)
    return {"n": int(e.size), "nme": float(e.mean()) if e.size else float("nan"),
            "fr": failure_rate(e, threshold), "auc": auc_at(e, threshold)}


def per_subset(errors: np.ndarray, flags: np.ndarray, names: Sequence[str], threshold: float = 0.1) -> dict[str, dict]:
    """:func:`landmark_summary` on each subset (faces whose flag is 1), plus ``"full"``.

    Args:
        errors: ``(B,)`` per-face NME.
        flags: ``(B, A)`` 0/1 subset membership (WFLW: pose, expression, illumination, make-up, occlusion, blur).
        names: the ``A`` subset names.
    """
    e = np.asarray(errors, dtype=np.float64)
    f = np.asarray(flags).reshape(e.size, -1)
    out = {"full": landmark_summary(e, threshold)}
    for k, name in enumerate(names):
        out[name] = landmark_summary(e[f[:, k] > 0], threshold)
    return out


def flip_nme(pred: np.ndarray, pred_flipped: np.ndarray, schema: str | LandmarkSchema, width: int) -> np.ndarray:
    """Per-face NME between the prediction and the un-flipped prediction on the flipped image (flip error).

    Args:
        pred: ``(B, N, 2)`` on the images.
        pred_flipped: ``(B, N, 2)`` on the horizontally flipped images (in their frame).
        schema: the layout.
        width: image width.

    Returns:
        ``(B,)``; 0 for a perfectly flip-equivariant model.
    """
    return nme(flip_landmarks(pred_flipped, schema, width), pred, schema)
