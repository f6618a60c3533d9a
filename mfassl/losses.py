"""Symmetry losses on the pre-fusion tokens of a mirror pair.

Both take ``p_l``, ``p_r`` of shape ``(B, N, C)`` and an optional ``(B, N)`` bool ``mask`` (True where
a token is valid, the same convention as :class:`mfassl.mfa.MirrorFusionAttention`'s ``key_mask``), and
return a scalar: the mean over the samples that have at least one valid token.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ReflectionConsistencyLoss", "TokenAlignmentLoss"]


def _check(p_l: torch.Tensor, p_r: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if p_l.shape != p_r.shape or p_l.ndim != 3:
        raise ValueError(f"p_l and p_r must both be (B, N, C), got {tuple(p_l.shape)} and {tuple(p_r.shape)}.")
    if mask is None:
        return torch.ones(p_l.shape[:2], dtype=p_l.dtype, device=p_l.device)
    if mask.shape != p_l.shape[:2]:
        raise ValueError(f"mask must be (B, N) = {tuple(p_l.shape[:2])}, got {tuple(mask.shape)}.")
    return mask.to(p_l.dtype)


def _batch_mean(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B,)`` values over samples whose ``(B, N)`` weights are not all zero."""
    has = (weights.sum(1) > 0).to(per_sample.dtype)
    return (per_sample * has).sum() / has.sum().clamp(min=1.0)


class ReflectionConsistencyLoss(nn.Module):
    """``L_eq = 1 - cos(normalize(mean_i P_l[i]), normalize(mean_i P_r[i]))``, masked mean over tokens."""

    def forward(self, p_l: torch.Tensor, p_r: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        w = _check(p_l, p_r, mask)
        denom = w.sum(1, keepdim=True).clamp(min=1.0)
        mean_l = (p_l * w[..., None]).sum(1) / denom
        mean_r = (p_r * w[..., None]).sum(1) / denom
        per_sample = 1.0 - F.cosine_similarity(F.normalize(mean_l, dim=-1), F.normalize(mean_r, dim=-1), dim=-1)
        return _batch_mean(per_sample, w)


class TokenAlignmentLoss(nn.Module):
    """``L_mid = mean_i || normalize(P_l[i]) - normalize(P_r[i]) ||^2`` over valid tokens."""

    def forward(self, p_l: torch.Tensor, p_r: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        w = _check(p_l, p_r, mask)
        sq = (F.normalize(p_l, dim=-1) - F.normalize(p_r, dim=-1)).pow(2).sum(-1)  # (B, N)
        per_sample = (sq * w).sum(1) / w.sum(1).clamp(min=1.0)
        return _batch_mean(per_sample, w)
