"""DINO: self-distillation with a momentum teacher, centring and sharpening (Caron et al., 2021)."""

from __future__ import annotations

from typing import Sequence

import ignite.distributed as idist
import torch
import torch.nn as nn
import torch.nn.functional as F

from mfassl.backbones import MFABackbone
from mfassl.objectives.base import BaseObjective, PairResult, ViewSpec, group_by_shape
from mfassl.objectives.heads import DINOHead

__all__ = ["DINOLoss", "DINO"]


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over view pairs ``i != j``.

    Args:
        out_dim: prototypes.
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature (0.04).
        center_momentum: EMA momentum of the centre (0.9).

    Attributes:
        center: ``(1, out_dim)`` buffer, the running mean of the teacher outputs.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, teacher_out: Sequence[torch.Tensor], student_out: Sequence[torch.Tensor],
                update_center: bool = True) -> torch.Tensor:
        """Loss over all (teacher view ``i``, student view ``j``) pairs with ``i != j``.

        Args:
            teacher_out: per global view ``(B, out_dim)`` teacher logits.
            student_out: per view ``(B, out_dim)`` student logits; the first ``len(teacher_out)``
                views are the same global views the teacher saw.
            update_center: update the centre with the teacher outputs afterwards.
        """
        if len(teacher_out) < 1 or len(student_out) < 2:
            raise ValueError("DINOLoss needs at least one teacher view and two student views.")
        t_probs = [F.softmax((t - self.center) / self.teacher_temp, dim=-1).detach() for t in teacher_out]
        s_logp = [F.log_softmax(s / self.student_temp, dim=-1) for s in student_out]
        total, terms = 0.0, 0
        for i, q in enumerate(t_probs):
            for j, lp in enumerate(s_logp):
                if i == j:
                    continue
                total = total + (-(q * lp).sum(-1)).mean()
                terms += 1
        if update_center:
            self.update_center(torch.cat(list(teacher_out)))
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the batch mean of ``(B, out_dim)`` teacher logits, averaged across processes."""
        batch_center = teacher_out.sum(0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if idist.get_world_size() > 1:
            batch_center = idist.all_reduce(batch_center)
            count = idist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)


class DINO(BaseObjective):
    """DINO on an MFA backbone; the teacher (backbone + head, MFA included) is a momentum copy.

    Args:
        backbone: student backbone.
        out_dim: prototypes (65536 published).
        hidden_dim: head MLP width (2048).
        bottleneck_dim: head bottleneck (256).
        student_temp: 0.1.
        teacher_temp: 0.04.
        center_momentum: 0.9.
    """

    name = "dino"
    views = ViewSpec(2, 8)
    momentum = 0.996

    def __init__(self, backbone: MFABackbone, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9) -> None:
        super().__init__(backbone)
        self.head = DINOHead(backbone.embed_dim, hidden_dim, bottleneck_dim, out_dim)
        self.teacher = self._make_teacher(backbone, self.head)
        self.loss_fn = DINOLoss(out_dim, student_temp, teacher_temp, center_momentum)
        self.pair_loss_fn = DINOLoss(out_dim, student_temp, teacher_temp, center_momentum)

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher[0]), (self.head, self.teacher[1])]

    def _embed(self, backbone: MFABackbone, head: nn.Module, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(views)
        for idx, batch in group_by_shape(views):
            logits = head(backbone(batch)).chunk(len(idx))
            for i, lg in zip(idx, logits):
                out[i] = lg
        return out  # type: ignore[return-value]

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_views(views)
        n_g = self.views.n_global
        with torch.no_grad():
            teacher = self._embed(self.teacher[0], self.teacher[1], views[:n_g])
        student = self._embed(self.backbone, self.head, views)
        loss = self.loss_fn(teacher, student)
        return {"loss": loss}

    def forward_pair(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float = 1.0, use_mfa: bool = True,
                     key_mask: torch.Tensor | None = None) -> PairResult:
        paired = self.backbone.forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask)
        s_l = self.head(self.backbone.pool(paired.out_l))
        s_r = self.head(self.backbone.pool(paired.out_r))
        with torch.no_grad():
            t = self.teacher[0].forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask)
            t_l = self.teacher[1](self.teacher[0].pool(t.out_l))
            t_r = self.teacher[1](self.teacher[0].pool(t.out_r))
        loss = self.pair_loss_fn([t_l, t_r], [s_l, s_r])
        return PairResult({"loss": loss}, paired, None)
