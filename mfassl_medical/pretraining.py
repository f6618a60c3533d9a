"""Pieces the pretraining bundles call from their JSON configs: data lists, batch preparation, the run
history and the end-of-run report (losses, gate statistics, axis confidence, figures).

The bundles (``bundles/mfassl_brats_pretrain``, ``bundles/mfassl_chexpert_pretrain``) build their data
with MONAI dictionary transforms (load, orient, resample, estimate the symmetry axis, canonicalise, resize),
so images reach the trainer with their axis on the centre line/plane; :func:`prepare_canonical_batch` hands
them to :class:`~mfassl.method.MFASSL` with ``axes=None`` (the centre).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from mfassl.geometry import hyperplane_class

__all__ = [
    "brats_pretrain_datalist",
    "chexpert_pretrain_datalist",
    "prepare_canonical_batch",
    "RunHistory",
    "write_report",
]

logger = logging.getLogger(__name__)


def demo_paths():
    from mfassl_medical.demo_data import build_demo_data

    return build_demo_data()


def brats_pretrain_datalist(dataset_dir: str | None = None, max_cases: int | None = None) -> list[dict[str, Any]]:
    """BraTS cases as ``{"image": [t1, t1ce, t2, flair], "case": ...}``; ``dataset_dir`` None = the demo data.

    Args:
        dataset_dir: a BraTS root with one folder per case (2021 or 2023 naming), or None/"" for the
            synthetic demo set (built on first use).
        max_cases: keep only the first cases (quick runs).
    """
    from mfassl_medical.data import find_brats_cases

    root = Path(dataset_dir) if dataset_dir else demo_paths().brats
    cases = find_brats_cases(root, require_seg=False, on_incomplete="skip")
    if not cases:
        raise FileNotFoundError(f"no BraTS case folders found under {root}.")
    items = [{"image": c["image"], "source": list(c["image"]), "case": c.get("case", "")} for c in cases]
    return items[:max_cases] if max_cases else items


def chexpert_pretrain_datalist(dataset_dir: str | None = None, split: str = "train", frontal_only: bool = True,
                               max_images: int | None = None) -> list[dict[str, Any]]:
    """CheXpert images as ``{"image": path, "patient": ...}``; ``dataset_dir`` None = the demo data.

    Args:
        dataset_dir: the CheXpert folder holding ``train.csv``/``valid.csv`` (e.g. ``CheXpert-v1.0-small``), or
            None/"" for the synthetic demo set.
        split: ``"train"`` or ``"valid"``.
        frontal_only: drop lateral views.
        max_images: keep only the first images (quick runs).
    """
    from mfassl_medical.data import read_chexpert

    root = Path(dataset_dir) if dataset_dir else demo_paths().chexpert
    records = read_chexpert(root, split=split, frontal_only=frontal_only)
    items = [{"image": r["image"], "source": r["image"], "patient": r.get("patient", "")} for r in records]
    return items[:max_images] if max_images else items


def prepare_canonical_batch(batch: Any, device: torch.device | str) -> tuple[torch.Tensor, None]:
    """``(images, None)``: canonicalised images, so the symmetry axis is the centre."""
    images = batch["image"] if isinstance(batch, dict) else batch[0]
    return torch.as_tensor(images).to(device, non_blocking=True).float(), None


class RunHistory:
    """Keeps every iteration's outputs (losses, gate mean, schedule values) of a trainer.

    Args:
        path: where :meth:`save` writes the history as JSON.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []

    def attach(self, trainer: Engine) -> "RunHistory":
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        return self

    def _record(self, engine: Engine) -> None:
        out = dict(engine.state.output or {})
        out["iteration"] = float(engine.state.iteration)
        self.rows.append({k: float(v) for k, v in out.items() if isinstance(v, (int, float))})

    def save(self) -> None:
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_text(json.dumps(self.rows))


def _loss_figure(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "base", "mirror"):
        if key in rows[0]:
            axes[0].plot(it, [r[key] for r in rows], label=key)
    axes[0].set_xlabel("iteration")
    axes[0].set_title("losses")
    axes[0].legend()
    for key in ("l_eq", "l_mid", "gate_mean", "w", "ramp"):
        if key in rows[0]:
            axes[1].plot(it, [r[key] for r in rows], label=key)
    axes[1].set_xlabel("iteration")
    axes[1].set_title("symmetry terms and schedule")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def axis_figure(items: Sequence[dict[str, Any]], path: Path, max_items: int = 4) -> int:
    """Overlay each item's estimated axis on its first channel (3D: the middle axial slice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

    shown = [it for it in items if "image_axis_world" in it][:max_items]
    if not shown:
        return 0
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
    for ax, item in zip(axes[0], shown):
        src = item["source"]
        first = src[0] if isinstance(src, (list, tuple)) else src
        img = LoadImage(image_only=True)(first)
        img = EnsureChannelFirst()(img)
        dims = img.ndim - 1
        if dims == 3:
            img = Orientation(axcodes="RAS")(img)
        affine = np.asarray(img.affine, dtype=np.float64)
        arr = np.asarray(img[0], dtype=np.float32)
        row = np.asarray(item["image_axis_world"], dtype=np.float64)
        world = hyperplane_class(len(row) - 1)(normal=row[:-1], offset=row[-1])
        if dims == 3:
            aff = affine if affine.shape == (4, 4) else np.eye(4)
            index = world.to_index(aff)
            k = arr.shape[2] // 2
            line = index.cut_by_slice(axis=2, index=k)
            plane = arr[:, :, k]
        else:
            aff = affine[np.ix_([0, 1, 3], [0, 1, 3])] if affine.shape == (4, 4) else affine
            line = world.to_index(aff) if len(row) == 3 else world
            plane = arr
        # 3D RAS slices: anterior up (origin lower); 2D images: row 0 at the top
        ax.imshow(plane.T, cmap="gray", origin="lower" if dims == 3 else "upper")
        # line n . (i, j) = d drawn in display coords (x = i, y = j)
        n, d = line.normal, line.offset
        h, w = plane.shape
        if abs(n[0]) >= abs(n[1]):
            js = np.array([0.0, w - 1.0])
            ax.plot((d - n[1] * js) / n[0], js, "r-", lw=1.5)
        else:
            i_s = np.array([0.0, h - 1.0])
            ax.plot(i_s, (d - n[0] * i_s) / n[1], "r-", lw=1.5)
        ax.set_xlim(0, h - 1)
        ax.set_ylim((0, w - 1) if dims == 3 else (w - 1, 0))
        conf = item.get("axis_confidence", float("nan"))
        ax.set_title(f"conf {conf:.2f}{' (fallback)' if item.get('axis_fallback') else ''}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(shown)


def write_report(trainer: Engine, history: RunHistory, dataset: Any, output_dir: str, bundle: str = "",
                 print_report: bool = True, model_file: str | None = None) -> dict[str, Any]:
    """Write ``report.json``, ``loss_curves.png`` and ``axis_overlays.png`` and print a short report.

    Args:
        trainer: the finished trainer (from :func:`mfassl.engine.create_trainer`).
        history: the :class:`RunHistory` attached to it.
        dataset: the training dataset (its items carry ``axis_confidence``/``axis_fallback``/``image_axis_world``
            and the source file under ``source``).
        output_dir: where the run wrote checkpoints (``checkpoints/``) and TensorBoard logs (``tb/``).
        bundle: the bundle name, for the text.
        print_report: print the text report.
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
    }
    if rows:
        per_epoch = max(1, len(rows) // max(1, report["epochs"]))
        report["loss_last_epoch_mean"] = float(np.mean([r["loss"] for r in rows[-per_epoch:]]))
        _loss_figure(rows, out / "loss_curves.png")
        report["loss_curves_png"] = str(out / "loss_curves.png")
    try:
        if axis_figure(items, out / "axis_overlays.png"):
            report["axis_overlays_png"] = str(out / "axis_overlays.png")
    except Exception as err:  # a figure problem must not fail a finished run
        logger.warning("could not draw the axis overlays: %s", err)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if print_report:
        print(format_report(report))
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
        "(the total also grows as w(t) brings the symmetry terms in)",
        f"MFA gate mean: last {_fmt(r['gate_mean_last'], '.3g')}, max {_fmt(r['gate_mean_max'], '.3g')} "
        f"(MFA active in {r['mfa_on_iterations']} iterations)",
        f"symmetry axis: median confidence {_fmt(r['axis_confidence_median'], '.3f')}, "
        f"min {_fmt(r['axis_confidence_min'], '.3f')}, fallbacks to the image centre: {r['axis_fallbacks']}",
        f"figures: {r.get('loss_curves_png', 'n/a')}",
        f"         {r.get('axis_overlays_png', 'n/a')}",
        f"checkpoints: {r['checkpoint_dir']}",
        f"encoder weights: {r.get('model_file') or 'n/a'} (evaluate.json, inference.json and ckpt_export read them)",
        f"TensorBoard: tensorboard --logdir {r['tensorboard_dir']}",
        f"next: point dataset_dir at the real data (--dataset_dir {_REAL_DATA_HINT.get(r['bundle'], '/path/to/data')}), "
        "raise --epochs, resume with --resume_from auto, and use several GPUs with torchrun and "
        "configs/multi_gpu_train.json (see the bundle's docs/README.md).",
        "",
    ]
    return "\n".join(lines)
