"""The pretraining bundles' evaluation (``configs/evaluate.json``): how good is the pretrained encoder?

Three read-outs of the encoder on labelled images, each scored with AUROC, AUPRC, F1, NLL, ECE (15 bins),
Brier and flip consistency with bootstrap confidence intervals (:mod:`mfassl.evaluation`):

- ``knn``: weighted k-NN on frozen features;
- ``linear``: logistic regression on frozen features (a linear probe);
- ``finetune``: the encoder and a linear head trained end to end (``finetune_freeze`` keeps the encoder
  frozen).

Flip consistency compares each test image with its mirror image about the estimated symmetry axis: the images
arrive canonicalised (axis on the centre), so the mirror image is a flip of the array. Flip-invariant labels
must keep their prediction; lateralised ones (``lesion_left``) must swap it.

Besides the scores: the *inference shift*, the relative change MFA makes to the layer-l tokens of a mirror
pair (MFA is a pretraining block and is dropped at inference, so a large shift means the pretrained features
relied on it), and figures: ROC curves, reliability diagrams, axis overlays and gate maps. Everything goes to
``<output_dir>/report.json`` and PNGs beside it.

Labels: CheXpert observations from the CSV (``uncertainty`` policy, blank = negative), split ``train``/``valid``
as the dataset ships them; BraTS ``lesion_present`` / ``lesion_left`` from the segmentation (see
:mod:`mfassl_medical.transforms.lesion`), split by case. The data lists ``evaluate.json`` names
(:func:`~mfassl_medical.data.chexpert.chexpert_eval_data`, :func:`~mfassl_medical.data.brats.brats_eval_data`)
live with their readers and are re-exported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mfassl import evaluation as ev
from mfassl.cli import strict_json
from mfassl.files import write_json
from mfassl.options import as_bool, as_float, as_int
from mfassl.pairing import mirror_pair, pair_key_mask
from mfassl_medical.data.brats import brats_eval_data
from mfassl_medical.data.chexpert import CHEXPERT_COMPETITION_LABELS, chexpert_eval_data
from mfassl_medical.data.safe import find_medical_error, item_source
from mfassl_medical.figures import axis_figure

__all__ = [
    "CHEXPERT_COMPETITION_LABELS",
    "chexpert_eval_data",
    "brats_eval_data",
    "SymmetryEvaluator",
]

logger = logging.getLogger(__name__)


def _stack(dataset: Sequence[dict[str, Any]], desc: str, bad: list[dict[str, str]] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Images ``(N, C, *S)``, labels ``(N, L)`` and the items (for figures) of a preprocessed dataset.

    An item that cannot be read (a :class:`~mfassl_medical.errors.MedicalDataError` in its chain) is left out,
    logged and appended to ``bad`` as ``{"source", "reason"}``; other errors propagate.
    """
    images, labels, items = [], [], []
    for i in tqdm(range(len(dataset)), desc=desc, leave=False):
        try:
            item = dataset[i]
        except Exception as e:
            err = find_medical_error(e)
            if err is None:
                raise
            data = getattr(dataset, "data", None)
            src = (item_source(data[i]) if data is not None and i < len(data) else None) or \
                getattr(err, "path", None) or f"{desc} item {i}"
            logger.warning("%s: skipping %s: %s", desc, src, getattr(err, "reason", err))
            if bad is not None:
                bad.append({"source": str(src), "reason": str(getattr(err, "reason", err))})
            continue
        images.append(torch.as_tensor(item["image"]).float())
        labels.append(torch.as_tensor(item["labels"]).float().reshape(-1))
        items.append(item)
    if not images:
        raise ValueError(f"{desc}: the dataset is empty.")
    return torch.stack(images), torch.stack(labels), items


class SymmetryEvaluator:
    """Scores a pretrained encoder with k-NN, a linear probe and fine-tuning, plus the MFA inference shift.

    Args:
        encoder: the pretrained encoder (the bundle's ``network_def`` with ``models/model.pt`` loaded).
        train_dataset, test_dataset: preprocessed datasets whose items hold a canonicalised ``image``
            ``(C, *S)`` (the encoder's input size) and ``labels`` ``(L,)`` (NaN = not used).
        label_names: one name per label.
        lateral: per label, True when a mirror image must swap it (flip consistency then checks the swap).
        output_dir: where ``report.json`` and the PNGs go.
        modes: any of ``"knn"``, ``"linear"``, ``"finetune"``.
        split_dim: the left-right spatial dimension of the canonical images.
        device: where the encoder runs.
        knn_k, knn_temperature: the k-NN read-out.
        linear_epochs, linear_lr: the linear probe.
        finetune_epochs, finetune_lr, finetune_batch_size, finetune_freeze: the fine-tuning read-out.
        n_bootstrap, alpha: the confidence intervals (percentile bootstrap over test images).
        shift_batch: how many test images the inference shift and the gate maps use.
        seed: seeds every random step.
        bundle: the bundle name, for the report.
    """

    def __init__(self, encoder: nn.Module, train_dataset: Sequence[dict[str, Any]],
                 test_dataset: Sequence[dict[str, Any]], label_names: Sequence[str], lateral: Sequence[bool],
                 output_dir: str, modes: Sequence[str] = ("knn", "linear", "finetune"), split_dim: int = 0,
                 device: torch.device | str = "cpu", knn_k: int = 20, knn_temperature: float = 0.07,
                 linear_epochs: int = 100, linear_lr: float = 1e-2, finetune_epochs: int = 5,
                 finetune_lr: float = 1e-4, finetune_batch_size: int = 16, finetune_freeze: bool = False,
                 n_bootstrap: int = 1000, alpha: float = 0.05, shift_batch: int = 4, seed: int = 0,
                 bundle: str = "") -> None:
        unknown = set(modes) - {"knn", "linear", "finetune"}
        if unknown:
            raise ValueError(f"unknown evaluation mode(s) {sorted(unknown)}; use knn, linear, finetune.")
        if len(lateral) != len(label_names):
            raise ValueError(f"{len(label_names)} label names but {len(lateral)} lateral flags.")
        self.encoder = encoder
        self.train_dataset, self.test_dataset = train_dataset, test_dataset
        self.label_names, self.lateral = list(label_names), [bool(v) for v in lateral]
        self.output_dir = Path(output_dir)
        self.modes = list(modes)
        self.split_dim = int(split_dim)
        self.device = torch.device(device)
        self.knn = dict(k=as_int(knn_k, "knn_k", low=1),
                        temperature=as_float(knn_temperature, "knn_temperature", low=1e-12))
        self.linear = dict(epochs=as_int(linear_epochs, "linear_epochs", low=0),
                           lr=as_float(linear_lr, "linear_lr", low=0.0))
        self.finetune = dict(epochs=as_int(finetune_epochs, "finetune_epochs", low=0),
                             lr=as_float(finetune_lr, "finetune_lr", low=0.0),
                             batch_size=as_int(finetune_batch_size, "finetune_batch_size", low=1),
                             freeze=as_bool(finetune_freeze, "finetune_freeze"))
        self.n_bootstrap = as_int(n_bootstrap, "n_bootstrap", low=0)
        self.alpha = as_float(alpha, "alpha", low=0.0, high=1.0)
        self.shift_batch, self.seed = as_int(shift_batch, "shift_batch", low=0), as_int(seed, "seed")
        self.bundle = bundle

    # -- pieces -------------------------------------------------------------------------------------------------
    def mirror_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, *S)`` mirror images about the canonical centre plane (a flip of the left-right dimension)."""
        return images.flip(2 + self.split_dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` pooled encoder features (MFA unused, as at inference)."""
        return ev.extract_features(self.encoder, images, self.device)

    def score(self, probs: torch.Tensor, probs_flipped: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """The metrics with confidence intervals of one read-out."""
        return ev.classification_report(probs.numpy(), labels.numpy(), probs_flipped=probs_flipped.numpy(),
                                        names=self.label_names, swap=self.lateral, n_boot=self.n_bootstrap,
                                        alpha=self.alpha, seed=self.seed)

    def inference_shift(self, images: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor | None,
                                                              tuple[int, ...]]:
        """The relative layer-l token change MFA causes on mirror pairs of ``images``; also the left halves,
        their gates (None without MFA) and the gate grid, for the gate-map figure."""
        backbone = self.encoder.to(self.device).eval()
        size = tuple(images.shape[2:])
        pair = mirror_pair(images.to(self.device), None, mirror_size=size, split_dim=self.split_dim)
        key_mask = pair_key_mask(pair, backbone.mfa_patch_size)
        result, gates = ev.inference_shift(backbone, pair.x_l, pair.x_r, key_mask=key_mask, return_gates=True)
        return result, pair.x_l, gates, backbone.grid_shape(size, at_mfa=True)

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run every read-out, write ``report.json`` and the figures, log a summary; returns the report."""
        torch.manual_seed(self.seed)
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        bad_train: list[dict[str, str]] = []
        bad_test: list[dict[str, str]] = []
        x_tr, y_tr, _ = _stack(self.train_dataset, "train images", bad_train)
        x_te, y_te, items = _stack(self.test_dataset, "test images", bad_test)
        x_te_flip = self.mirror_image(x_te)
        report: dict[str, Any] = {
            "bundle": self.bundle, "label_names": self.label_names, "lateral": self.lateral,
            "n_train": int(len(x_tr)), "n_test": int(len(x_te)), "bootstrap": {"n": self.n_bootstrap,
                                                                              "alpha": self.alpha},
            "positives_test": {n: int(np.nansum(y_te[:, i].numpy())) for i, n in enumerate(self.label_names)},
            "readouts": {}, "figures": {},
            "bad_samples": {"train": bad_train, "test": bad_test},
        }
        need_features = any(m in self.modes for m in ("knn", "linear"))
        if need_features:
            f_tr, f_te, f_te_flip = self.features(x_tr), self.features(x_te), self.features(x_te_flip)
        roc_curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        reliability: tuple[np.ndarray, np.ndarray] | None = None
        for mode in self.modes:
            if mode == "knn":
                p = ev.knn_predict(f_tr, y_tr, torch.cat([f_te, f_te_flip]), **self.knn)
            elif mode == "linear":
                p = ev.linear_probe(f_tr, y_tr, torch.cat([f_te, f_te_flip]), seed=self.seed, **self.linear)
            else:
                p = ev.fine_tune(self.encoder, x_tr, y_tr, torch.cat([x_te, x_te_flip]), seed=self.seed,
                                 device=self.device, **self.finetune)
            p = p.detach().float().cpu()
            probs, probs_flip = p[: len(x_te)], p[len(x_te):]
            report["readouts"][mode] = self.score(probs, probs_flip, y_te)
            keep = ~torch.isnan(y_te[:, 0])
            roc_curves[f"{mode}: {self.label_names[0]}"] = (probs[keep, 0].numpy(), y_te[keep, 0].numpy())
            if mode == "linear" or reliability is None:
                reliability = (probs[keep, 0].numpy(), y_te[keep, 0].numpy())
        if roc_curves:
            report["figures"]["roc"] = str(ev.plot_roc(roc_curves, out / "roc.png"))
            report["figures"]["reliability"] = str(ev.plot_reliability(*reliability, out / "reliability.png"))
        shift, halves, gates, grid = self.inference_shift(x_te[: self.shift_batch])
        report["inference_shift"] = shift
        if gates is not None:
            report["figures"]["gate_maps"] = str(ev.plot_gate_maps(halves.cpu(), gates.cpu(), grid,
                                                                   out / "gate_maps.png"))
        try:
            if axis_figure(items, out / "axis_overlays.png"):
                report["figures"]["axis_overlays"] = str(out / "axis_overlays.png")
        except Exception as err:  # a figure must not fail a finished evaluation
            logger.warning("could not draw the axis overlays: %s", err)
        write_json(out / "report.json", strict_json(report), indent=2, allow_nan=False)
        logger.info("%s", format_summary(report))
        return report


def _cell(m: dict[str, float] | None) -> str:
    if not m or m.get("value") is None or (isinstance(m["value"], float) and math.isnan(m["value"])):
        return "n/a"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{m['value']:.3f} [n/a]"
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def format_summary(report: dict[str, Any], metrics: Sequence[str] = ("auroc", "auprc", "f1", "ece", "brier",
                                                                      "flip_consistency")) -> str:
    """A text table of the macro scores of each read-out, with the inference shift."""
    lines = ["", f"=== MFASSL evaluation: {report['bundle']} ({report['n_train']} train / {report['n_test']} test "
                 f"images; labels {', '.join(report['label_names'])}) ===",
             "read-out  | " + " | ".join(f"{m} [95% CI]" for m in metrics)]
    for mode, r in report["readouts"].items():
        lines.append(f"{mode:9s} | " + " | ".join(_cell(r["macro"].get(m)) for m in metrics))
    s = report.get("inference_shift", {})
    lines.append(f"inference shift (relative change of the layer-l tokens MFA causes): "
                 f"{s.get('relative_shift', float('nan')):.4f}; gate mean {s.get('gate_mean', float('nan')):.3g}")
    for name, path in report.get("figures", {}).items():
        lines.append(f"figure {name}: {path}")
    lines.append("")
    return "\n".join(lines)
