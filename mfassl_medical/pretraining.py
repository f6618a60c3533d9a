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
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from mfassl.geometry import hyperplane_class
from mfassl.options import as_bool, as_int

__all__ = [
    "brats_pretrain_datalist",
    "chexpert_pretrain_datalist",
    "attach_axes",
    "default_num_workers",
    "resolve_cache_kind",
    "default_cache_dir",
    "pretrain_dataset",
    "bad_sample_report",
    "prepare_canonical_batch",
    "RunHistory",
    "write_report",
]

logger = logging.getLogger(__name__)


def demo_paths():
    from mfassl_medical.demo_data import build_demo_data

    return build_demo_data()


def brats_pretrain_datalist(dataset_dir: str | None = None, max_cases: int | None = None,
                            axes_file: str | None = None) -> list[dict[str, Any]]:
    """BraTS cases as ``{"image": [t1, t1ce, t2, flair], "case": ...}``; ``dataset_dir`` None = the demo data.

    Args:
        dataset_dir: a BraTS root with one folder per case (2021 or 2023 naming), or None/"" for the
            synthetic demo set (built on first use).
        max_cases: keep only the first cases (quick runs).
        axes_file: precomputed axes (``python -m mfassl_medical axes DIR --kind brats``); each case found in it
            gets ``image_axis_precomputed`` and is not estimated in the loader. None: estimate lazily.
    """
    from mfassl_medical.data import find_brats_cases

    max_cases = as_int(max_cases, "max_cases", low=0, allow_none=True)
    root = Path(dataset_dir) if dataset_dir else demo_paths().brats
    cases = find_brats_cases(root, require_seg=False, on_incomplete="skip")
    if not cases:
        raise FileNotFoundError(f"no BraTS case folders found under {root}.")
    items = [{"image": c["image"], "source": list(c["image"]), "case": c.get("case", "")} for c in cases]
    items = items[:max_cases] if max_cases else items
    return attach_axes(items, axes_file, root, "brats")


def chexpert_pretrain_datalist(dataset_dir: str | None = None, split: str = "train", frontal_only: bool = True,
                               max_images: int | None = None, axes_file: str | None = None) -> list[dict[str, Any]]:
    """CheXpert images as ``{"image": path, "patient": ...}``; ``dataset_dir`` None = the demo data.

    Args:
        dataset_dir: the CheXpert folder holding ``train.csv``/``valid.csv`` (e.g. ``CheXpert-v1.0-small``), or
            None/"" for the synthetic demo set.
        split: ``"train"`` or ``"valid"``.
        frontal_only: drop lateral views.
        max_images: keep only the first images (quick runs).
        axes_file: precomputed axes (``python -m mfassl_medical axes DIR --kind chexpert``); each image found in
            it gets ``image_axis_precomputed`` and is not estimated in the loader. None: estimate lazily.
    """
    from mfassl_medical.data import read_chexpert

    frontal_only = as_bool(frontal_only, "frontal_only")
    max_images = as_int(max_images, "max_images", low=0, allow_none=True)
    root = Path(dataset_dir) if dataset_dir else demo_paths().chexpert
    records = read_chexpert(root, split=split, frontal_only=frontal_only)
    items = [{"image": r["image"], "source": r["image"], "patient": r.get("patient", "")} for r in records]
    items = items[:max_images] if max_images else items
    return attach_axes(items, axes_file, root, "chexpert")


def _none_word(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def attach_axes(items: list[dict[str, Any]], axes_file: str | None, dataset_dir: str | Path,
                kind: str) -> list[dict[str, Any]]:
    """Give each data-list item found in ``axes_file`` its precomputed world axis.

    Items are matched on :func:`mfassl_medical.axes_cli.axes_key` (the path relative to ``dataset_dir`` for
    CheXpert, the case folder for BraTS) and get ``image_axis_precomputed`` = ``{"normal", "offset",
    "confidence", "fallback"}``, which :class:`~mfassl_medical.transforms.EstimateSymmetryAxisd` uses instead of
    estimating (the record is part of the item, so a disk cache keys on it). Items not in the file (or with
    an error line) are estimated in the loader; how many is logged.

    Raises:
        FileNotFoundError: naming ``axes_file`` when it does not exist.
    """
    if _none_word(axes_file):
        return items
    from mfassl_medical.axes_cli import axes_key, read_axes_file

    table = read_axes_file(str(axes_file))
    found = 0
    for it in items:
        rec = table.get(axes_key(dataset_dir, it["image"], kind))
        if rec is not None:
            it["image_axis_precomputed"] = {"normal": [float(v) for v in rec["normal"]],
                                            "offset": float(rec["offset"]),
                                            "confidence": float(rec.get("confidence", 1.0)),
                                            "fallback": bool(rec.get("fallback", False))}
            found += 1
    missing = len(items) - found
    (logger.warning if missing else logger.info)(
        "axes file %s: %d of %d images have a precomputed axis%s", axes_file, found, len(items),
        f"; the other {missing} are estimated in the loader" if missing else "")
    return items


CACHE_KINDS = ("auto", "memory", "disk", "none")


def default_num_workers(dataset_dir: str | None = None) -> int:
    """DataLoader workers: 0 for the demo data (cached in memory, workers only add start-up time),
    ``min(8, CPUs)`` for a real ``dataset_dir``."""
    return 0 if _none_word(dataset_dir) else min(8, os.cpu_count() or 1)


def resolve_cache_kind(cache: str, dataset_dir: str | None = None) -> str:
    """``"memory"`` | ``"disk"`` | ``"none"`` for the ``cache`` option (``"auto"``: memory for the demo data,
    disk for a real ``dataset_dir``).

    Raises:
        ValueError: naming the option for anything but auto, memory, disk or none.
    """
    kind = str(cache).strip().lower()
    if kind not in CACHE_KINDS:
        raise ValueError(f"option 'cache': {cache!r} is not one of {', '.join(CACHE_KINDS)}.")
    if kind == "auto":
        return "memory" if _none_word(dataset_dir) else "disk"
    return kind


def default_cache_dir(output_dir: str, transform: Any) -> Path:
    """``<output_dir>/../cache/<hash of the preprocessing>``: beside the run folder, so runs with other
    output folders under the same parent and every rank share it; a change of the preprocessing gets a new
    folder."""
    from mfassl_medical.data.cache import preprocessing_hash

    return Path(output_dir).expanduser().resolve().parent / "cache" / preprocessing_hash(transform)


def pretrain_dataset(data: Sequence[dict[str, Any]], transform: Any, cache: str = "auto",
                     dataset_dir: str | None = None, output_dir: str = "runs/pretrain", cache_dir: str | None = None,
                     cache_rate: float = 1.0, num_workers: int = 0,
                     max_bad_fraction: float | None = 0.01) -> Any:
    """The training dataset of a pretraining bundle: cached preprocessing that skips and counts bad samples.

    Args:
        data: the data list (:func:`chexpert_pretrain_datalist`, :func:`brats_pretrain_datalist`).
        transform: the deterministic preprocessing (``train#preprocessing``; random transforms after the
            first one are applied on every read).
        cache: ``"memory"`` (MONAI ``CacheDataset``: everything computed before the first step and kept in RAM;
            fastest for the small demo set), ``"disk"`` (``PersistentDataset``: each item computed lazily the
            first time a DataLoader worker needs it and kept as a file, memory flat in the data-set size),
            ``"none"`` (recomputed every read) or ``"auto"`` (memory for the demo data, disk for a real
            ``dataset_dir``).
        dataset_dir: the bundle's ``dataset_dir`` (decides ``"auto"``).
        output_dir: the run folder; the default disk cache is :func:`default_cache_dir`.
        cache_dir: the disk cache folder (shared across runs, ranks and nodes; None: the default).
        cache_rate: share of items ``CacheDataset`` keeps (memory cache).
        num_workers: ``CacheDataset`` caching threads (memory cache).
        max_bad_fraction: the largest share of unreadable samples the run accepts (skipped, counted, logged
            and listed in the report) before it stops with an error naming them; None: no limit.

    Returns:
        a :class:`~mfassl_medical.data.safe.SkipBadSamples` around the cached dataset.
    """
    from monai.data import Dataset

    from mfassl.options import as_float
    from mfassl_medical.data.cache import SafeCacheDataset, SharedPersistentDataset
    from mfassl_medical.data.safe import SkipBadSamples

    kind = resolve_cache_kind(cache, dataset_dir)
    limit = None if _none_word(max_bad_fraction) else as_float(max_bad_fraction, "max_bad_fraction", low=0.0,
                                                                  high=1.0)
    workers = as_int(num_workers, "num_workers", low=0)
    if not len(data):
        raise ValueError("the training data list is empty.")
    if kind == "memory":
        base = SafeCacheDataset(data=list(data), transform=transform,
                                cache_rate=as_float(cache_rate, "cache_rate", low=0.0, high=1.0),
                                num_workers=workers, progress=False)
    elif kind == "disk":
        folder = Path(cache_dir).expanduser() if not _none_word(cache_dir) else default_cache_dir(output_dir,
                                                                                                   transform)
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("disk cache of the preprocessing: %s (%d items)", folder, len(data))
        base = SharedPersistentDataset(data=list(data), transform=transform, cache_dir=folder)
    else:
        base = Dataset(data=list(data), transform=transform)
    return SkipBadSamples(base, max_bad_fraction=limit)


def bad_sample_report(dataset: Any) -> dict[str, Any]:
    """The bad-sample counts of a :class:`~mfassl_medical.data.safe.SkipBadSamples` dataset for the run report
    (``{}`` for any other dataset)."""
    summary = getattr(dataset, "summary", None)
    return summary() if callable(summary) else {}


def prepare_canonical_batch(batch: Any, device: torch.device | str) -> tuple[torch.Tensor, None]:
    """``(images, None)``: canonicalised images, so the symmetry axis is the centre."""
    images = batch["image"] if isinstance(batch, dict) else batch[0]
    return torch.as_tensor(images).to(device, non_blocking=True).float(), None


class RunHistory:
    """Keeps every iteration's outputs (losses, gate mean, schedule values) of a trainer, across resumes.

    Each row holds ``iteration``. The history is written (atomically) after every epoch and when the run
    completes. When a run resumes (the trainer starts at iteration ``k > 0``), the rows of the earlier runs
    are read back from ``path`` and those past ``k`` (written after the checkpoint) are dropped, so the
    history is the whole run, each iteration once; a history that stops short of ``k`` is kept with a warning
    naming the gap.

    Args:
        path: the JSON file (``<output_dir>/history.json``); None keeps the rows in memory only.

    Use as a handler: ``create_trainer(..., handlers=[..., RunHistory(path)])`` (the bundles' ``train#handlers``)
    or ``RunHistory(path).attach(trainer)``.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.rows: list[dict[str, float]] = []

    def attach(self, trainer: Engine) -> "RunHistory":
        if not trainer.has_event_handler(self._started, Events.STARTED):
            trainer.add_event_handler(Events.STARTED, self._started)
            trainer.add_event_handler(Events.ITERATION_COMPLETED, self._record)
            trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.save())
            trainer.add_event_handler(Events.COMPLETED, lambda _: self.save())
        return self

    def _read(self) -> list[dict[str, float]]:
        if not self.path or not Path(self.path).is_file():
            return []
        try:
            rows = json.loads(Path(self.path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.path} (the run history) cannot be read to continue it: {err}; move it away "
                             "to start a new history.") from err
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "iteration" in r for r in rows):
            raise ValueError(f"{self.path} is not a run history (a JSON list of rows with 'iteration').")
        return rows

    def _started(self, engine: Engine) -> None:
        start = int(engine.state.iteration)
        if start == 0:
            self.rows = []
            return
        rows = self.rows or self._read()
        kept = [r for r in rows if float(r["iteration"]) <= start]
        if len(kept) < len(rows):
            logger.info("history %s: dropped %d rows past iteration %d (written after the checkpoint)", self.path,
                        len(rows) - len(kept), start)
        last = int(kept[-1]["iteration"]) if kept else 0
        if last < start:
            logger.warning("history %s holds iterations up to %d but the run resumes at %d: iterations %d-%d are "
                           "missing from it and from the report.", self.path, last, start, last + 1, start)
        self.rows = kept

    def _record(self, engine: Engine) -> None:
        out = dict(engine.state.output or {})
        out["iteration"] = float(engine.state.iteration)
        self.rows.append({k: float(v) for k, v in out.items() if isinstance(v, (int, float))})

    def save(self) -> None:
        """Write the rows to ``path`` (temporary file + rename; rank 0 only under ``torch.distributed``)."""
        if not self.path:
            return
        import ignite.distributed as idist

        if idist.get_rank() != 0:
            return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.rows))
        os.replace(tmp, path)


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
        **bad_sample_report(dataset),
    }
    if rows:
        per_epoch = int(trainer.state.epoch_length or max(1, len(rows) // max(1, report["epochs"])))
        last_epoch = [r["loss"] for r in rows if r["iteration"] > report["iterations"] - per_epoch] or [rows[-1]["loss"]]
        report["loss_last_epoch_mean"] = float(np.mean(last_epoch))
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
        *([f"bad samples skipped: {r['bad_samples']} ({100 * r['bad_fraction']:.2f}%, limit "
           f"{_fmt(r.get('max_bad_fraction'), 'g')}): " + "; ".join(r.get("bad_files", [])[:10])]
          if r.get("bad_samples") else []),
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
