"""The landmark evaluation report: NME, FR and AUC at a threshold with bootstrap intervals, per test subset,
and the table the commands print (in percent, as papers report NME).

:func:`landmark_report` is shared by the landmark benchmark (:func:`mfassl_faces.benchmark.run_landmark_benchmark`)
and the score command (:mod:`mfassl_faces.cli_score`), so a trained head and an external model's prediction
file are measured the same way. Errors are per-face NME (:func:`mfassl_faces.metrics.nme`); the statistics
are :mod:`mfassl_faces.metrics`' own (:func:`~mfassl_faces.metrics.mean_error`,
:func:`~mfassl_faces.metrics.failure_rate`, :func:`~mfassl_faces.metrics.auc_at`,
:func:`~mfassl_faces.metrics.per_subset`): a non-finite error (a face without a usable prediction: a NaN
or infinite prediction, or a missing one counted as failed) is a failure for FR, scores 0 in AUC and is
left out of the mean NME (``n_failed`` counts these faces).

The JSON keeps fractions (``nme`` 0.046); the table prints NME and FR in percent (4.60) and AUC as a
fraction, the usual way of landmark papers.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mfassl_faces.metrics import auc_at, bootstrap_ci, failure_rate, mean_error, per_subset

__all__ = ["landmark_report", "format_landmark_table"]


def landmark_report(errors: np.ndarray, flags: np.ndarray | None = None, names: Sequence[str] = (),
                    threshold: float = 0.1, normalization: str = "inter-ocular", n_boot: int = 500,
                    seed: int = 0) -> dict[str, Any]:
    """NME / FR / AUC of per-face errors with percentile bootstrap 95% intervals, and per subset.

    Args:
        errors: ``(B,)`` per-face NME (fractions); non-finite for failed faces.
        flags: ``(B, A)`` 0/1 subset membership (WFLW's six attributes, 300W's common / challenging).
        names: the ``A`` subset names.
        threshold: the FR and AUC threshold (0.1; 0.08 is also common).
        normalization: the NME normalisation the errors used (recorded).
        n_boot: bootstrap resamples over faces.
        seed: bootstrap seed.

    Returns:
        ``{"normalization", "threshold", "n", "n_failed", "nme", "fr", "auc", "subsets"}`` with ``nme``,
        ``fr``, ``auc`` each ``{"value", "ci_low", "ci_high"}`` and ``subsets`` ``{"full": ..., name: ...}``
        (:func:`~mfassl_faces.metrics.per_subset`; empty without ``names``).
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)

    def ci(stat) -> dict[str, float]:
        est, lo, hi = bootstrap_ci(stat, e, n_boot=n_boot, seed=seed)
        return {"value": est, "ci_low": lo, "ci_high": hi}

    return {
        "normalization": normalization, "threshold": float(threshold), "n": int(e.size),
        "n_failed": int(np.count_nonzero(~np.isfinite(e))),
        "nme": ci(mean_error), "fr": ci(lambda x: failure_rate(x, threshold)),
        "auc": ci(lambda x: auc_at(x, threshold)),
        "subsets": per_subset(e, flags, names, threshold) if names else {},
    }


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{100.0 * v:.{digits}f}"


def format_landmark_table(report: Mapping[str, Any], title: str | None = None) -> str:
    """The report as a text table: one row for the full set (with the 95% interval of the NME) and one per
    subset; NME and FR in percent, AUC as a fraction."""
    t = report["threshold"]
    head = title or f"NME normalised by the {report['normalization']} distance"
    lines = [f"{head}; NME and FR in percent, FR and AUC at {t:g}",
             f"{'subset':<14}{'faces':>7}  {'NME (%)':<22}{f'FR@{t:g} (%)':>12}{f'AUC@{t:g}':>11}"]
    nme = report["nme"]
    interval = f"{_pct(nme['value'])} [{_pct(nme['ci_low'])}, {_pct(nme['ci_high'])}]"
    auc = report["auc"]["value"]
    lines.append(f"{'full':<14}{report['n']:>7}  {interval:<22}{_pct(report['fr']['value']):>12}"
                 f"{'-' if not np.isfinite(auc) else f'{auc:.4f}':>11}")
    for name, s in report.get("subsets", {}).items():
        if name == "full":
            continue
        auc = s["auc"]
        lines.append(f"{name:<14}{s['n']:>7}  {_pct(s['nme']):<22}{_pct(s['fr']):>12}"
                     f"{'-' if auc is None or not np.isfinite(auc) else f'{auc:.4f}':>11}")
    if report.get("n_failed"):
        lines.append(f"({report['n_failed']} face(s) without a usable prediction count as failures and are left "
                     "out of the mean NME)")
    return "\n".join(lines)
