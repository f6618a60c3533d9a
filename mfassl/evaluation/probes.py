"""Read-outs of a pretrained encoder: features, weighted k-NN, a linear probe and fine-tuning.

Labels are ``(N, K)`` multi-label {0, 1} targets; NaN marks a label not used for that row and is left out
of the fit (and of the k-NN vote) for that label. Every function returns ``(N_test, K)`` probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["extract_features", "knn_predict", "linear_probe", "fine_tune"]


def _batches(images: Iterable[torch.Tensor] | torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size]
    else:
        yield from images


@torch.no_grad()
def extract_features(encoder: nn.Module, images: Iterable[torch.Tensor] | torch.Tensor,
                     device: torch.device | str = "cpu", batch_size: int = 32) -> torch.Tensor:
    """``(N, D)`` pooled features of the encoder's plain forward (eval mode, no MFA, as at inference).

    Args:
        encoder: an MFA backbone (its ``forward`` returns ``(B, D)``) or any module doing the same.
        images: ``(N, C, *S)``, or an iterable of ``(B, C, *S)`` batches (a data loader's images).
        device: where the encoder runs.
        batch_size: batch size when ``images`` is one tensor.
    """
    was_training = encoder.training
    encoder.to(device).eval()
    out = [encoder(x.to(device).float()).float().cpu() for x in _batches(images, batch_size)]
    encoder.train(was_training)
    if not out:
        raise ValueError("no images to extract features from.")
    return torch.cat(out)


def _targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets with NaN set to 0, mask of used entries)``, both ``(N, K)`` float."""
    y = torch.as_tensor(labels, dtype=torch.float32)
    y = y[:, None] if y.ndim == 1 else y
    mask = torch.isfinite(y).float()
    return torch.nan_to_num(y, nan=0.0), mask


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN (as in DINO's evaluation): cosine similarity, neighbours weighted by ``exp(sim / T)``.

    Args:
        train_features: ``(N, D)``.
        train_labels: ``(N, K)`` in {0, 1}, NaN = unused.
        test_features: ``(M, D)``.
        k: neighbours (capped at N).
        temperature: T.

    Returns:
        ``(M, K)``: per label, the weighted share of positive neighbours among those where it is used (0.5
        when none is).
    """
    y, mask = _targets(train_labels)
    a = F.normalize(train_features.float(), dim=1)
    b = F.normalize(test_features.float(), dim=1)
    sim = b @ a.T
    k = max(1, min(int(k), a.shape[0]))
    top, idx = sim.topk(k, dim=1)
    w = torch.exp(top / temperature)
    w = w / w.max(dim=1, keepdim=True).values  # scale-free, avoids overflow
    wy, wm = y[idx], mask[idx]  # (M, k, K)
    num = (w[..., None] * wy * wm).sum(1)
    den = (w[..., None] * wm).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, 0.5))


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 epochs: int = 100, lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Logistic regression on standardised frozen features (full batch, AdamW, masked BCE).

    Args:
        train_features: ``(N, D)``; the mean and std used to standardise come from them.
        train_labels: ``(N, K)`` in {0, 1}, NaN = unused.
        test_features: ``(M, D)``.
        epochs: full-batch steps.
        lr, weight_decay: AdamW.
        seed: the initialisation seed.

    Returns:
        ``(M, K)`` probabilities.
    """
    y, mask = _targets(train_labels)
    x = train_features.float()
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(x.shape[1], y.shape[1])
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(int(epochs)):
        loss = (F.binary_cross_entropy_with_logits(head(x), y, reduction="none") * mask).sum() / mask.sum().clamp_min(1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(head((test_features.float() - mean) / std))


def fine_tune(encoder: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
              test_images: torch.Tensor, epochs: int = 5, lr: float = 1e-4, batch_size: int = 16, seed: int = 0,
              device: torch.device | str = "cpu", freeze: bool = False, weight_decay: float = 0.05) -> torch.Tensor:
    """Train a copy of the encoder with a linear head end to end (masked BCE, AdamW) and predict.

    Args:
        encoder: the pretrained encoder; it is deep-copied, the caller's module is not changed.
        train_images: ``(N, C, *S)``.
        train_labels: ``(N, K)`` in {0, 1}, NaN = unused.
        test_images: ``(M, C, *S)``.
        epochs: passes over the training images (shuffled, seeded).
        lr: AdamW learning rate (the head's is 10x).
        batch_size: images per step.
        seed: shuffling and head initialisation.
        device: where to train.
        freeze: keep the encoder frozen and train the head only (a probe through the encoder).
        weight_decay: AdamW weight decay.

    Returns:
        ``(M, K)`` probabilities of the fine-tuned model.
    """
    y, mask = _targets(train_labels)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(encoder).to(device)
    with torch.no_grad():
        dim = model(train_images[:1].to(device).float()).shape[1]
    head = nn.Linear(dim, y.shape[1]).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    for p in model.parameters():
        p.requires_grad_(not freeze)
    groups = [{"params": head.parameters(), "lr": lr * 10}]
    if not freeze:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": lr})
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    n = len(train_images)
    for _ in range(int(epochs)):
        model.train(not freeze)
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            rows = order[i:i + batch_size]
            logits = head(model(train_images[rows].to(device).float()))
            m = mask[rows].to(device)
            loss = (F.binary_cross_entropy_with_logits(logits, y[rows].to(device), reduction="none") * m).sum() \
                / m.sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(head(model(x.to(device).float()))).cpu()
                          for x in _batches(test_images, batch_size)])
