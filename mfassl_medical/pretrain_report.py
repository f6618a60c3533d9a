"""The end-of-run report of the pretraining bundles: ``report.json``, the figures and a text summary.

:func:`write_report` is the bundles' last step (``train.json``'s ``finalize``): losses, MFA gate statistics,
symmetry-axis confidence and fallbacks, bad samples skipped, where the checkpoints, the encoder and the
TensorBoard logs are, and how to go on. The summary is logged at INFO (the bundles' ``logging.conf`` shows it on
the console).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine

from mfassl.files import write_json

from mfassl_medical.figures import axis_figure, loss_figure
from mfassl_medical.history import RunHistory

__all__ = ["write_report", "format_report", "bad_sample_report"]

logger = logging.getLogger(__name__)


def bad_sample_report(dataset: Any) -> dict[str, Any]:
    """The bad-sample counts of a :class:`~mfassl_medical.data.safe.SkipBadSamples` dataset for the run report
    (``{}`` for any other dataset)."""
    summary = getattr(dataset, "summary", None)
    return summary() if callable(summary) else {}


def write_report(trainer: Engine, history: RunHistory, dataset: Any, output_dir: str, bundle: str = "",
                 log_report: bool = True, model_file: str | None = None) -> dict[str, Any]:
    """Write ``report.json``, ``loss_curves.png`` and ``axis_overlays.png`` and log a short report.

    Args:
        trainer: the finished trainer (from :func:`mfassl.engine.create_trainer`).
        history: the :class:`RunHistory` attached to it.
        dataset: the training dataset (its items carry ``axis_confidence``/``axis_fallback``/``image_axis_world``
            and the source file under ``source``).
        output_dir: where the run wrote checkpoints (``checkpoints/``) and TensorBoard logs (``tb/``).
        bundle: the bundle name, for the text.
        log_report: log the text report (:func:`format_report`) at INFO.
        model_file: where the run saved the encoder weights (``models/model.pt``), for the text.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    history.save()
    rows = history.rows
    items = []
    try:
        items = [dataset[i] for i in range(min(len(dataset), 256))]
    except Exception as err:  # the report must never fail a finished run
        logger.warning("could not read dataset items for the report: %s", err)
    items = [it[0] if isinstance(it, list) else it for it in items]
    confs = [float(it["axis_confidence"]) for it in items if "axis_confidence" in it]
    fallbacks = sum(bool(it.get("axis_fallback", False)) for it in items)
    report: dict[str, Any] = {
        "bundle": bundle,
        "mirror": bool(getattr(trainer, "run_settings", {}).get("mirror", True)),
        "epochs": int(trainer.state.epoch),
        "iterations": int(trainer.state.iteration),
        "loss_first": rows[0]["loss"] if rows else None,
        "loss_last": rows[-1]["loss"] if rows else None,
        "loss_last_epoch_mean": None,
        "base_first": rows[0].get("base") if rows else None,
        "base_last": rows[-1].get("base") if rows else None,
        "mirror_first": rows[0].get("mirror") if rows else None,
        "mirror_last": rows[-1].get("mirror") if rows else None,
        "l_mid_first": rows[0].get("l_mid") if rows else None,
        "l_mid_last": rows[-1].get("l_mid") if rows else None,
        "gate_mean_last": rows[-1].get("gate_mean") if rows else None,
        "gate_mean_max": max((r.get("gate_mean", 0.0) for r in rows), default=None),
        "mfa_on_iterations": int(sum(r.get("mfa_on", 0.0) > 0 for r in rows)),
        "axis_confidence_median": float(np.median(confs)) if confs else None,
        "axis_confidence_min": float(min(confs)) if confs else None,
        "axis_fallbacks": int(fallbacks),
        "images": len(items),
        "checkpoint_dir": str(out / "checkpoints"),
        "tensorboard_dir": str(out / "tb"),
        "model_file": str(model_file) if model_file else None,
        **bad_sample_report(dataset),
    }
    if rows:
        per_epoch = int(trainer.state.epoch_length or max(1, len(rows) // max(1, report["epochs"])))
        last_epoch = [r["loss"] for r in rows if r["iteration"] > report["iterations"] - per_epoch] or [rows[-1]["loss"]]
        report["loss_last_epoch_mean"] = float(np.mean(last_epoch))
        loss_figure(rows, out / "loss_curves.png")
        report["loss_curves_png"] = str(out / "loss_curves.png")
    try:
        if axis_figure(items, out / "axis_overlays.png"):
            report["axis_overlays_png"] = str(out / "axis_overlays.png")
    except Exception as err:  # a figure problem must not fail a finished run
        logger.warning("could not draw the axis overlays: %s", err)
    write_json(out / "report.json", report, indent=2)
    if log_report:
        logger.info("%s", format_report(report))
    return report


_REAL_DATA_HINT = {
    "mfassl_brats_pretrain": "/data/BraTS2021_TrainingData",
    "mfassl_chexpert_pretrain": "/data/CheXpert-v1.0-small",
}


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_report(r: dict[str, Any]) -> str:
    """The human-readable report of :func:`write_report`."""
    lines = [
        "",
        f"=== MFASSL pretraining report: {r['bundle']} ===",
        f"epochs {r['epochs']}, iterations {r['iterations']}, images {r['images']}",
        f"loss: first {_fmt(r['loss_first'])}, last {_fmt(r['loss_last'])}, last-epoch mean {_fmt(r['loss_last_epoch_mean'])}",
        f"  parts: base objective {_fmt(r['base_first'])} -> {_fmt(r['base_last'])}, mirror branch "
        f"{_fmt(r['mirror_first'])} -> {_fmt(r['mirror_last'])}, L_mid {_fmt(r['l_mid_first'])} -> {_fmt(r['l_mid_last'])} "
        + ("(the total also grows as w(t) brings the symmetry terms in)" if r.get("mirror", True)
           else "(mirror off: the flip baseline, no symmetry terms)"),
        f"MFA gate mean: last {_fmt(r['gate_mean_last'], '.3g')}, max {_fmt(r['gate_mean_max'], '.3g')} "
        f"(MFA active in {r['mfa_on_iterations']} iterations)",
        f"symmetry axis: median confidence {_fmt(r['axis_confidence_median'], '.3f')}, "
        f"min {_fmt(r['axis_confidence_min'], '.3f')}, fallbacks to the image centre: {r['axis_fallbacks']}",
        *([f"bad samples skipped: {r['bad_samples']} ({100 * r['bad_fraction']:.2f}%, limit "
           f"{_fmt(r.get('max_bad_fraction'), 'g')}): " + "; ".join(r.get("bad_files", [])[:10])]
          if r.get("bad_samples") else []),
        f"figures: {r.get('loss_curves_png', 'n/a')}",
        f"         {r.get('axis_overlays_png', 'n/a')}",
        f"checkpoints: {r['checkpoint_dir']}",
        f"encoder weights: {r.get('model_file') or 'n/a'} (evaluate.json, inference.json and ckpt_export read them"
        + ("; merge configs/demo.json last, as the bundle README's demo commands do)"
           if "/models/demo/" in str(r.get("model_file") or "").replace("\\", "/") else ")"),
        f"TensorBoard: tensorboard --logdir {r['tensorboard_dir']}",
        f"next: point dataset_dir at the real data (--dataset_dir {_REAL_DATA_HINT.get(r['bundle'], '/path/to/data')}), "
        "raise --epochs, resume with --resume_from auto, and use several GPUs with torchrun and "
        "configs/multi_gpu_train.json (see the bundle's docs/README.md).",
        "",
    ]
    return "\n".join(lines)
