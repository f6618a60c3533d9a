"""MoCo-v3: momentum encoder, projector + predictor, symmetric InfoNCE (Chen, Xie & He, 2021)."""

from __future__ import annotations

from typing import Sequence

import ignite.distributed as idist
import torch
import torch.nn as nn
import torch.nn.functional as F

from mfassl.backbones import MFABackbone
from mfassl.objectives.base import GLOBAL_FEATURES, BaseObjective, PairResult, ViewSpec
from mfassl.objectives.heads import MoCoPredictionHead, MoCoProjectionHead
from mfassl.objectives.registry import OBJECTIVES

__all__ = ["InfoNCELoss", "MoCoV3"]


class InfoNCELoss(nn.Module):
    """``2 T * CE(q k^T / T, diag)`` with the keys gathered from every process.

    Args:
        temperature: ``T`` (0.2 for ViTs in MoCo-v3).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``q`` ``(B, D)`` queries, ``k`` ``(B, D)`` keys (no gradient) -> scalar."""
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        offset = 0
        if idist.get_world_size() > 1:
            k = idist.all_gather(k.contiguous())
            offset = q.shape[0] * idist.get_rank()
        logits = q @ k.t() / self.temperature
        labels = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(logits, labels) * (2.0 * self.temperature)


@OBJECTIVES.register("mocov3")
class MoCoV3(BaseObjective):
    """MoCo-v3 on an MFA backbone.

    Args:
        backbone: student backbone (the momentum encoder is a copy).
        proj_hidden_dim: projector width (4096).
        out_dim: embedding width (256).
        pred_hidden_dim: predictor width (4096).
        temperature: InfoNCE temperature (0.2).
    """

    name = "mocov3"
    views = ViewSpec(2, 0)
    momentum = 0.99

    def __init__(self, backbone: MFABackbone, proj_hidden_dim: int = 4096, out_dim: int = 256,
                 pred_hidden_dim: int = 4096, temperature: float = 0.2) -> None:
        super().__init__(backbone)
        self.projector = MoCoProjectionHead(backbone.embed_dim, proj_hidden_dim, out_dim)
        self.predictor = MoCoPredictionHead(out_dim, pred_hidden_dim, out_dim)
        self.teacher = self._make_teacher(backbone, self.projector)
        self.loss_fn = InfoNCELoss(temperature)

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher[0]), (self.projector, self.teacher[1])]

    def _pair_loss(self, q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(q1, k2) + self.loss_fn(q2, k1)

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_views(views)
        v1, v2 = views[0], views[1]
        b = v1.shape[0]
        both = torch.cat([v1, v2]) if v1.shape == v2.shape else None
        if both is not None:
            pooled = self.backbone(both)
            q1, q2 = self.predictor(self.projector(pooled)).split(b)
        else:
            f1, f2 = self.backbone(v1), self.backbone(v2)
            q1, q2 = self.predictor(self.projector(f1)), self.predictor(self.projector(f2))
            pooled = torch.cat([f1, f2])
        with torch.no_grad():
            if both is not None:
                k1, k2 = self.teacher[1](self.teacher[0](both)).split(b)
            else:
                k1, k2 = self.teacher[1](self.teacher[0](v1)), self.teacher[1](self.teacher[0](v2))
        return {"loss": self._pair_loss(q1, q2, k1, k2), GLOBAL_FEATURES: pooled}

    def forward_pair(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float = 1.0, use_mfa: bool = True,
                     key_mask: torch.Tensor | None = None) -> PairResult:
        paired = self.backbone.forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask)
        b = x_l.shape[0]
        feats = torch.cat([self.backbone.pool(paired.out_l), self.backbone.pool(paired.out_r)])
        q_l, q_r = self.predictor(self.projector(feats)).split(b)
        with torch.no_grad():
            t = self.teacher[0].forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask)
            tf = torch.cat([self.teacher[0].pool(t.out_l), self.teacher[0].pool(t.out_r)])
            k_l, k_r = self.teacher[1](tf).split(b)
        return PairResult({"loss": self._pair_loss(q_l, q_r, k_l, k_r)}, paired, None)
