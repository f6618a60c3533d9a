"""Landmark and attribute metrics: NME, FR@t, AUC@t, CED, flip NME, AUROC, ECE, Brier, bootstrap.

Landmark errors are per face: ``NME = mean_i ||p_i - g_i|| / d`` with ``d`` from the ground truth ``g``
(:data:`NORMALIZATIONS`, :func:`normalizing_distance`):

- ``inter-ocular`` (default): ``||g_a - g_b||`` with ``(a, b)`` the outer eye corners (WFLW 60 and
  72, 300W 36 and 45);
- ``inter-pupil``: the distance between the pupils (WFLW's points 96 and 97; on 68 points the
  centroids of the eye contours 36-41 and 42-47);
- ``box``: ``sqrt(w * h)`` of the ground-truth landmarks' bounding box.

Over a set of faces with errors ``e_k`` and a threshold ``t`` (0.1):

- ``FR@t`` = share of faces with ``e_k > t`` (or ``e_k`` not finite, below);
- ``AUC@t`` = area under the cumulative error distribution (CED) on ``[0, t]`` divided by ``t``,
  which equals ``mean_k max(0, t - e_k) / t`` exactly (no sampling of the curve);
- flip NME (:func:`flip_nme`) = the NME between the prediction and the un-flipped prediction on the
  mirror image: how far a landmark model is from flip equivariance. (The core's
  :func:`mfassl.evaluation.flip_consistency` is another measure: the agreement of classifier
  probabilities on an image and its mirror.)

A *non-finite* per-face error (a prediction holding NaN or infinity: a diverged model, a detector
that placed no point; the score command's missing predictions with ``--missing fail``) is a failed face,
never a success: it counts in ``FR@t`` (``NaN > t`` would be false), adds nothing to ``AUC@t`` (its CED
step lies beyond every threshold), and the NME (:func:`mean_error`) is the mean over the finite errors,
reported beside ``n_failed``, the number of such faces (NaN, written ``null``, when no error is finite),
so no NaN reaches a mean or an interval. :func:`landmark_summary`, :func:`per_subset` and
:func:`mfassl_faces.report.landmark_report` all count this way.

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
    "NORMALIZATIONS",
    "normalizing_distance",
    "nme",
    "mean_error",
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
    "attribute_accuracy",
    "balanced_accuracy",
]

#: the NME normalisations by name (see the module docstring)
NORMALIZATIONS = ("inter-ocular", "inter-pupil", "box")


def normalizing_distance(target: np.ndarray, schema: str | LandmarkSchema,
                         normalization: str = "inter-ocular") -> np.ndarray:
    """The distance NME divides by, from the ground truth (see the module docstring).

    Args:
        target: ``(B, N, 2)`` ground-truth landmarks.
        schema: their layout.
        normalization: one of :data:`NORMALIZATIONS`.

    Returns:
        ``(B,)``.
    """
    s = get_schema(schema)
    g = s.check(target)
    if normalization == "inter-ocular":
        return s.inter_ocular(g)
    if normalization == "inter-pupil":
        return s.inter_pupil(g)
    if normalization == "box":
        extent = g.max(axis=-2) - g.min(axis=-2)
        return np.sqrt(extent[..., 0] * extent[..., 1])
    raise ValueError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}.")


def nme(pred: np.ndarray, target: np.ndarray, schema: str | LandmarkSchema,
        normalization: str = "inter-ocular") -> np.ndarray:
    """Per-face NME: the mean point error divided by :func:`normalizing_distance` of the target.

    Args:
        pred: ``(B, N, 2)`` predicted landmarks.
        target: ``(B, N, 2)`` ground truth.
        schema: the layout (gives the inter-ocular points and the pupils).
        normalization: ``inter-ocular`` (default), ``inter-pupil`` or ``box``.

    Returns:
        ``(B,)``.
    """
    s = get_schema(schema)
    p, g = s.check(pred), s.check(target)
    err = np.linalg.norm(p - g, axis=-1).mean(axis=-1)
    return err / np.maximum(normalizing_distance(g, s, normalization), 1e-12)


def mean_error(errors: np.ndarray) -> float:
    """Mean of the finite per-face errors (NaN when there are none: no face, or every prediction non-finite)."""
    e = np.asarray(errors, dtype=np.float64)
    e = e[np.isfinite(e)]
    return float(e.mean()) if e.size else float("nan")


def failure_rate(errors: np.ndarray, threshold: float = 0.1) -> float:
    """Share of faces whose NME exceeds ``threshold``; a non-finite NME is a failure."""
    e = np.asarray(errors, dtype=np.float64)
    return float(np.mean(~(e <= threshold))) if e.size else float("nan")


def auc_at(errors: np.ndarray, threshold: float = 0.1) -> float:
    """Area under the CED on ``[0, threshold]``, normalised to ``[0, 1]`` (a non-finite NME adds 0)."""
    e = np.asarray(errors, dtype=np.float64)
    gain = np.where(np.isfinite(e), np.clip(threshold - e, 0.0, None), 0.0)
    return float(np.mean(gain) / threshold) if e.size else float("nan")


def ced_curve(errors: np.ndarray, threshold: float = 0.1, steps: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """``(x, F(x))``: the share of faces with NME <= x for ``steps`` values of x in ``[0, threshold]``."""
    e = np.sort(np.asarray(errors, dtype=np.float64))
    x = np.linspace(0.0, threshold, steps)
    return x, np.searchsorted(e, x, side="right") / max(e.size, 1)


def plot_ced(curves: Mapping[str, np.ndarray], path: str | os.PathLike, threshold: float = 0.1,
             title: str = "Cumulative error distribution", normalization: str = "inter-ocular") -> None:
    """Save a CED plot (one line per named error array; the x label names the ``normalization``) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, errs in curves.items():
        x, y = ced_curve(errs, threshold)
        ax.plot(x, y, label=f"{name} (AUC {auc_at(errs, threshold):.3f})")
    ax.set_xlabel(f"NME ({normalization})")
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
    """``{"n", "n_failed", "nme", "fr", "auc"}`` of a set of per-face errors; ``n_failed`` counts the non-finite
    ones (see the module docstring)."""
    e = np.asarray(errors, dtype=np.float64)
    return {"n": int(e.size), "n_failed": int(np.count_nonzero(~np.isfinite(e))), "nme": mean_error(e),
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


def attribute_accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Share of correct 0/1 decisions ``probs >= threshold`` against ``labels`` (NaN for no labels)."""
    y = np.asarray(labels).reshape(-1) > 0.5
    d = np.asarray(probs, dtype=np.float64).reshape(-1) >= threshold
    return float(np.mean(d == y)) if y.size else float("nan")


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of the true-positive and true-negative rates of the decisions ``probs >= threshold`` (as
    ``sklearn.metrics.balanced_accuracy_score``); NaN when one class is absent (like :func:`auroc`)."""
    y = np.asarray(labels).reshape(-1) > 0.5
    d = np.asarray(probs, dtype=np.float64).reshape(-1) >= threshold
    if y.all() or not y.any():
        return float("nan")
    return float(0.5 * (np.mean(d[y]) + np.mean(~d[~y])))
