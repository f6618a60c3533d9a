"""Evaluation of pretrained encoders: classification metrics with bootstrap intervals, k-NN / linear /
fine-tuning read-outs, the MFA inference shift, and figures. Pure numpy/torch (plus MONAI metrics)."""

from mfassl.evaluation.bootstrap import bootstrap_ci, bootstrap_indices, percentile_interval
from mfassl.evaluation.figures import plot_gate_maps, plot_reliability, plot_roc, reliability_bins, roc_curve
from mfassl.evaluation.metrics import (
    METRICS,
    auprc,
    auroc,
    brier,
    classification_report,
    ece,
    f1,
    flip_consistency,
    nll,
    resampled_auroc,
)
from mfassl.evaluation.probes import extract_features, fine_tune, knn_predict, linear_probe
from mfassl.evaluation.shift import inference_shift

__all__ = [
    "METRICS", "auroc", "resampled_auroc", "auprc", "f1", "nll", "ece", "brier", "flip_consistency",
    "classification_report",
    "bootstrap_ci", "bootstrap_indices", "percentile_interval",
    "extract_features", "knn_predict", "linear_probe", "fine_tune",
    "inference_shift",
    "roc_curve", "reliability_bins", "plot_roc", "plot_reliability", "plot_gate_maps",
]
