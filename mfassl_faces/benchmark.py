"""The landmark benchmark and the attribute probe on an MFA encoder.

:func:`run_landmark_benchmark` trains a landmark head (linear or heatmap) on a frozen or
fine-tuned encoder and reports NME (inter-ocular by default; inter-pupil or box size), FR and AUC
at a threshold (0.1) with bootstrap intervals (:func:`mfassl_faces.report.landmark_report`), per
subset (WFLW's pose, expression, illumination, make-up, occlusion, blur; 300W's common and
challenging, when the data carry them) and flip consistency, saves a CED plot and every test face's
prediction in image pixels (``predictions.jsonl``, the format ``python -m mfassl_faces score``
reads). :func:`run_attribute_probe` fits a linear probe on frozen features for binary attributes
(CelebA-HQ's 40) and reports AUROC, accuracy and balanced accuracy (at p = 0.5), ECE (15 bins) and
Brier. These are evaluation loops for small heads, not the pretraining engine
(:mod:`mfassl.engine` trains the encoder).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from mfassl.backbones import MFABackbone
from mfassl.cli import strict_json
from mfassl.files import write_json
from mfassl_faces.heads import AttributeProbe, LandmarkModel
from mfassl_faces.predictions import image_key, write_predictions
from mfassl_faces.readers import LandmarkDataset
from mfassl_faces.metrics import (attribute_accuracy, auroc, balanced_accuracy, bootstrap_ci, brier, ece, flip_nme,
                                  mean_error, nme, plot_ced)
from mfassl_faces.report import landmark_report
from mfassl_faces.schemas import LandmarkSchema, get_schema

__all__ = ["run_landmark_benchmark", "run_attribute_probe", "predict_landmarks"]

logger = logging.getLogger(__name__)


def _loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


@torch.no_grad()
def predict_landmarks(model: LandmarkModel, loader: DataLoader, device: torch.device | str = "cpu",
                      flip: bool = False) -> dict[str, np.ndarray]:
    """Predictions on a loader: ``pred`` ``(M, N, 2)``, ``target``, ``attributes`` ``(M, A)`` (and ``pred_flipped``
    on the horizontally flipped images, in their frame, when ``flip``)."""
    model.eval()
    preds, flips, targets, attrs = [], [], [], []
    for batch in loader:
        x = batch["image"].to(device)
        preds.append(model(x).cpu())
        if flip:
            flips.append(model(x.flip(-1)).cpu())
        targets.append(batch["landmarks"])
        attrs.append(batch["attributes"])
    out = {"pred": torch.cat(preds).numpy(), "target": torch.cat(targets).numpy(), "attributes": torch.cat(attrs).numpy()}
    if flip:
        out["pred_flipped"] = torch.cat(flips).numpy()
    return out


def _ci(stat, *arrays, n_boot: int, seed: int) -> dict[str, float]:
    est, lo, hi = bootstrap_ci(stat, *arrays, n_boot=n_boot, seed=seed)
    return {"value": est, "ci_low": lo, "ci_high": hi}


def run_landmark_benchmark(backbone: MFABackbone, train_set: Dataset, test_set: Dataset,
                           schema: str | LandmarkSchema, img_size: int, head: str = "linear", finetune: bool = False,
                           epochs: int = 10, lr: float = 1e-3, batch_size: int = 16, threshold: float = 0.1,
                           n_boot: int = 500, subset_names: Sequence[str] | None = None,
                           out_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                           seed: int = 0, normalization: str = "inter-ocular",
                           image_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train a landmark head and evaluate it.

    Args:
        backbone: the encoder (its input channels must match the images, 3).
        train_set: items with ``image`` ``(3, S, S)``, ``landmarks`` ``(N, 2)`` pixels and ``attributes``
            (e.g. :class:`~mfassl_faces.readers.LandmarkDataset`).
        test_set: same layout.
        schema: landmark layout (its eye corners or pupils normalise the errors).
        img_size: ``S``.
        head: ``linear`` or ``heatmap``.
        finetune: train the encoder too (else frozen).
        epochs: training epochs of the head.
        lr: AdamW learning rate (the encoder gets ``lr / 10`` when fine-tuned).
        batch_size: batch size.
        threshold: NME threshold of FR and AUC (0.1; 0.08 is also common).
        n_boot: bootstrap resamples of the intervals.
        subset_names: names of the test set's attribute flags (WFLW subsets), in the order of its
            ``attributes`` columns; default the dataset's ``attribute_names``.
        out_dir: where ``landmark_benchmark.json``, ``ced.png`` and ``predictions.jsonl`` go (None: nowhere).
        device: torch device.
        seed: seed of the head, the data order and the bootstrap.
        normalization: ``inter-ocular``, ``inter-pupil`` or ``box`` (:func:`mfassl_faces.metrics.nme`).
        image_root: the folder the test images' paths in ``predictions.jsonl`` are written relative to.

    Returns:
        :func:`~mfassl_faces.report.landmark_report`'s ``{"normalization", "threshold", "n", "n_failed", "nme",
        "fr", "auc", "subsets"}`` (``nme``, ``fr``, ``auc`` each ``{"value", "ci_low", "ci_high"}``; ``n_failed``
        counts the test predictions holding NaN or infinity: failures in FR, left out of the NME, see
        :mod:`mfassl_faces.metrics`), plus ``"flip_nme"``, ``"n_train"``, ``"n_test"``, ``"head"``,
        ``"finetune"``, ``"train_loss"`` (per epoch), ``"ced_png"`` and ``"predictions"`` (the file, or None).
        ``landmark_benchmark.json`` is strict JSON: a value that is not a finite number is written ``null``.
    """
    s = get_schema(schema)
    torch.manual_seed(seed)
    model = LandmarkModel(backbone, head, s.n_points, img_size, finetune=finetune).to(device)
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if finetune:
        groups.append({"params": list(model.backbone.parameters()), "lr": lr / 10})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    loader = _loader(train_set, batch_size, True, seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    history = []
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            x, y = batch["image"].to(device), batch["landmarks"].to(device)
            pred = model(x)
            loss = nn.functional.smooth_l1_loss(pred / img_size, y / img_size, beta=0.01)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
        history.append(total / max(count, 1))
        logger.info("landmark head epoch %d/%d: loss %.5f", epoch + 1, epochs, history[-1])
    res = predict_landmarks(model, _loader(test_set, batch_size, False, seed), device, flip=True)
    errors = nme(res["pred"], res["target"], s, normalization)
    n_bad = int(np.count_nonzero(~np.isfinite(errors)))
    if n_bad:
        logger.warning("%d of %d test predictions are not finite: they count as failures in FR and add nothing to "
                       "AUC; the NME is the mean over the other %d.", n_bad, errors.size, errors.size - n_bad)
    names = list(subset_names) if subset_names is not None else list(getattr(test_set, "attribute_names", []))
    out: dict[str, Any] = {
        "n_train": len(train_set), "n_test": len(test_set), "head": head, "finetune": finetune,
        **landmark_report(errors, res["attributes"], names, threshold, normalization, n_boot, seed),
        "flip_nme": mean_error(flip_nme(res["pred"], res["pred_flipped"], s, img_size)),
        "train_loss": history,
        "ced_png": None,
        "predictions": None,
    }
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        curves = {"full": errors}
        curves.update({n: errors[res["attributes"][:, k] > 0] for k, n in enumerate(names)
                       if (res["attributes"][:, k] > 0).any()})
        plot_ced(curves, d / "ced.png", threshold, title=f"CED ({head} head, {'fine-tuned' if finetune else 'frozen'})",
                 normalization=normalization)
        out["ced_png"] = str(d / "ced.png")
        rows = prediction_rows(test_set, res["pred"], errors, image_root)
        if rows is not None:
            out["predictions"] = str(write_predictions(d / "predictions.jsonl", rows))
        write_json(d / "landmark_benchmark.json", strict_json(out), indent=1, allow_nan=False)
    return out


def prediction_rows(test_set: Dataset, pred_crop: np.ndarray, errors: np.ndarray,
                    image_root: str | os.PathLike | None = None) -> list[dict[str, Any]] | None:
    """Per-face prediction rows in original image pixels (the format of :mod:`mfassl_faces.predictions`).

    Args:
        test_set: a :class:`~mfassl_faces.readers.LandmarkDataset` (others carry no crop geometry: None).
        pred_crop: ``(M, N, 2)`` predictions in crop pixels, in the dataset's order.
        errors: ``(M,)`` their NME.
        image_root: image paths are written relative to it when they lie under it.

    Returns:
        ``[{"image", "face", "landmarks", "nme"}, ...]`` with ``face`` the face's index among the test faces
        of its image; None when ``test_set`` is not a ``LandmarkDataset``.
    """
    if not isinstance(test_set, LandmarkDataset):
        logger.info("the test set is not a LandmarkDataset: no per-face predictions file.")
        return None
    rows, seen = [], {}
    for i, rec in enumerate(test_set.records):
        m = test_set.crop_transform(i)
        pts = (np.asarray(pred_crop[i], dtype=np.float64) - m[:, 2]) @ np.linalg.inv(m[:, :2]).T
        key = image_key(rec.image, image_root)
        seen[key] = seen.get(key, -1) + 1
        rows.append({"image": key, "face": seen[key], "landmarks": np.round(pts, 4).tolist(),
                     "nme": float(errors[i])})
    return rows


@torch.no_grad()
def _features(backbone: MFABackbone, ds: Dataset, batch_size: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    backbone.eval()
    feats, labels = [], []
    for batch in _loader(ds, batch_size, False, 0):
        feats.append(backbone(batch["image"].to(device)).cpu())
        labels.append(batch["attributes"])
    return torch.cat(feats), torch.cat(labels)


def run_attribute_probe(backbone: MFABackbone, train_set: Dataset, test_set: Dataset,
                        attribute_names: Sequence[str] | None = None, epochs: int = 100, lr: float = 1e-2,
                        batch_size: int = 64, n_bins: int = 15, n_boot: int = 500,
                        out_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        seed: int = 0) -> dict[str, Any]:
    """Linear probe of binary attributes on frozen features.

    Args:
        backbone: the encoder (frozen).
        train_set: items with ``image`` and ``attributes`` ``(A,)`` 0/1 (e.g. :class:`~mfassl_faces.readers.CelebAHQDataset`).
        test_set: same layout.
        attribute_names: the ``A`` names (default: the dataset's ``names``).
        epochs: full-batch AdamW epochs on the cached features.
        lr: learning rate.
        batch_size: batch size of feature extraction.
        n_bins: ECE bins (15).
        n_boot: bootstrap resamples (over test images) of the mean AUROC.
        out_dir: where ``attribute_probe.json`` goes.
        device: torch device.
        seed: seed.

    Returns:
        ``{"mean_auroc", "mean_accuracy", "mean_balanced_accuracy"}`` each ``{"value", "ci_low", "ci_high"}``
        (means over the attributes; decisions at p = 0.5; an attribute with one class in the test set has no
        AUROC or balanced accuracy and is left out of those means), ``"ece"``, ``"brier"``,
        ``"per_attribute": {name: auroc}`` and ``"per_attribute_metrics": {name: {"auroc", "accuracy",
        "balanced_accuracy", "positive_rate"}}``; ECE and Brier pool all (image, attribute) predictions.
    """
    torch.manual_seed(seed)
    backbone = backbone.to(device)
    x_tr, y_tr = _features(backbone, train_set, batch_size, device)
    x_te, y_te = _features(backbone, test_set, batch_size, device)
    names = list(attribute_names) if attribute_names is not None else list(getattr(train_set, "names", []))
    if not names:
        names = [f"attr_{k}" for k in range(y_tr.shape[1])]
    probe = AttributeProbe(x_tr.shape[1], y_tr.shape[1])
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    probe.train()
    for _ in range(epochs):
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x_tr), y_tr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probe.eval()
    with torch.no_grad():
        p = torch.sigmoid(probe(x_te)).numpy()
    y = y_te.numpy()

    def mean_over_attributes(metric):
        def stat(pp: np.ndarray, yy: np.ndarray) -> float:
            vals = [metric(pp[:, k], yy[:, k]) for k in range(yy.shape[1])]
            vals = [v for v in vals if np.isfinite(v)]
            return float(np.mean(vals)) if vals else float("nan")
        return stat

    out: dict[str, Any] = {
        "n_train": len(train_set), "n_test": len(test_set),
        "mean_auroc": _ci(mean_over_attributes(auroc), p, y, n_boot=n_boot, seed=seed),
        "mean_accuracy": _ci(mean_over_attributes(attribute_accuracy), p, y, n_boot=n_boot, seed=seed),
        "mean_balanced_accuracy": _ci(mean_over_attributes(balanced_accuracy), p, y, n_boot=n_boot, seed=seed),
        "ece": ece(p, y, n_bins), "brier": brier(p, y),
        "per_attribute": {n: auroc(p[:, k], y[:, k]) for k, n in enumerate(names)},
        "per_attribute_metrics": {n: {"auroc": auroc(p[:, k], y[:, k]),
                                      "accuracy": attribute_accuracy(p[:, k], y[:, k]),
                                      "balanced_accuracy": balanced_accuracy(p[:, k], y[:, k]),
                                      "positive_rate": float(np.mean(y[:, k] > 0.5))}
                                  for k, n in enumerate(names)},
    }
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "attribute_probe.json", strict_json(out), indent=1, allow_nan=False)
    return out
