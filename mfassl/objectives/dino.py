"""DINO: self-distillation with a momentum teacher, centring and sharpening (Caron et al., 2021)."""

from __future__ import annotations

from typing import Sequence

import ignite.distributed as idist
import torch
import torch.nn as nn
import torch.nn.functional as F

from mfassl.backbones import MFABackbone
from mfassl.objectives.base import GLOBAL_FEATURES, BaseObjective, PairResult, ViewSpec, group_by_shape
from mfassl.objectives.heads import DINOHead
from mfassl.objectives.registry import OBJECTIVES

__all__ = ["DINOLoss", "DINO"]


def _stack(out: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``(V, B, K)`` from a stacked tensor (as is) or a sequence of ``(B, K)`` tensors."""
    return out if isinstance(out, torch.Tensor) else torch.stack(list(out))


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over view pairs ``i != j``.

    Args:
        out_dim: prototypes.
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature after the warm-up (0.04).
        center_momentum: EMA momentum of the centre (0.9).
        warmup_teacher_temp: teacher temperature at epoch 0 (default ``teacher_temp``: no warm-up).
        warmup_teacher_temp_epochs: epochs of the linear warm-up from ``warmup_teacher_temp`` to
            ``teacher_temp`` (DINO: 0.04 -> 0.07 over 30 epochs for its longer runs); see :meth:`set_epoch`.

    Attributes:
        center: ``(1, out_dim)`` buffer, the running mean of the teacher outputs.
        teacher_temp: the temperature in use (set by :meth:`set_epoch`).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, warmup_teacher_temp: float | None = None,
                 warmup_teacher_temp_epochs: float = 0.0) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.final_teacher_temp = teacher_temp
        self.warmup_teacher_temp = teacher_temp if warmup_teacher_temp is None else warmup_teacher_temp
        self.warmup_teacher_temp_epochs = float(warmup_teacher_temp_epochs)
        self.teacher_temp = self.warmup_teacher_temp if self.warmup_teacher_temp_epochs > 0 else teacher_temp
        self.register_buffer("center", torch.zeros(1, out_dim))

    def set_epoch(self, epoch: float) -> None:
        """The teacher temperature at a fractional epoch: linear from ``warmup_teacher_temp`` to
        ``teacher_temp`` over ``warmup_teacher_temp_epochs``, then constant."""
        if self.warmup_teacher_temp_epochs > 0 and epoch < self.warmup_teacher_temp_epochs:
            t = max(float(epoch), 0.0) / self.warmup_teacher_temp_epochs
            self.teacher_temp = self.warmup_teacher_temp + t * (self.final_teacher_temp - self.warmup_teacher_temp)
        else:
            self.teacher_temp = self.final_teacher_temp

    def forward(self, teacher_out: Sequence[torch.Tensor] | torch.Tensor,
                student_out: Sequence[torch.Tensor] | torch.Tensor, update_center: bool = True) -> torch.Tensor:
        """Loss over all (teacher view ``i``, student view ``j``) pairs with ``i != j``.

        Args:
            teacher_out: per global view ``(B, out_dim)`` teacher logits, or all of them stacked ``(T, B, out_dim)``.
            student_out: per view ``(B, out_dim)`` student logits, or stacked ``(S, B, out_dim)``; the first
                ``T`` views are the same global views the teacher saw.
            update_center: update the centre with the teacher outputs afterwards.

        All pairs are reduced in one product: the ``(T, S)`` matrix of cross-entropies summed over the batch
        is ``q.reshape(T, -1) @ log_p.reshape(S, -1).T``, then the diagonal ``i == j`` is left out.
        """
        if len(teacher_out) < 1 or len(student_out) < 2:
            raise ValueError("DINOLoss needs at least one teacher view and two student views.")
        t_out, s_out = _stack(teacher_out), _stack(student_out)
        n_t, n_s, b = t_out.shape[0], s_out.shape[0], s_out.shape[1]
        q = F.softmax((t_out - self.center) / self.teacher_temp, dim=-1).detach()
        log_p = F.log_softmax(s_out / self.student_temp, dim=-1)
        ce = -(q.reshape(n_t, -1) @ log_p.reshape(n_s, -1).t())  # (T, S), each summed over the batch
        loss = (ce.sum() - ce.diagonal().sum()) / (b * (n_t * n_s - min(n_t, n_s)))
        if update_center:
            self.update_center(t_out.reshape(-1, t_out.shape[-1]))
        return loss

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


@OBJECTIVES.register("dino")
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
        warmup_teacher_temp: teacher temperature at epoch 0 (default: ``teacher_temp``, no warm-up).
        warmup_teacher_temp_epochs: epochs of its linear warm-up to ``teacher_temp`` (0).
        head_batch_norm: BatchNorm in the head's hidden layers (DINO's ``use_bn_in_head``; False).
        momentum: the teacher's starting EMA momentum (0.996, DINO's; smaller runs learn with 0.99).
    """

    name = "dino"
    views = ViewSpec(2, 8)
    momentum = 0.996

    def __init__(self, backbone: MFABackbone, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, warmup_teacher_temp: float | None = None,
                 warmup_teacher_temp_epochs: float = 0.0, head_batch_norm: bool = False,
                 momentum: float | None = None) -> None:
        super().__init__(backbone)
        self.head = DINOHead(backbone.embed_dim, hidden_dim, bottleneck_dim, out_dim, batch_norm=head_batch_norm)
        self.teacher = self._make_teacher(backbone, self.head)
        temps = dict(student_temp=student_temp, teacher_temp=teacher_temp, center_momentum=center_momentum,
                     warmup_teacher_temp=warmup_teacher_temp, warmup_teacher_temp_epochs=warmup_teacher_temp_epochs)
        self.loss_fn = DINOLoss(out_dim, **temps)
        self.pair_loss_fn = DINOLoss(out_dim, **temps)
        if momentum is not None:
            self.momentum = float(momentum)  # the instance's starting momentum (the class keeps DINO's 0.996)

    def set_epoch(self, epoch: float) -> None:
        """The teacher-temperature warm-up of both losses (standard views and mirror pair)."""
        self.loss_fn.set_epoch(epoch)
        self.pair_loss_fn.set_epoch(epoch)

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher[0]), (self.head, self.teacher[1])]

    def _logits(self, backbone: MFABackbone, head: nn.Module,
                views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, B, out_dim)`` logits of ``V`` views and their ``(V * B, D)`` pooled features (view order): the
        backbone once per view shape, the head once for all."""
        feats: list[torch.Tensor | None] = [None] * len(views)
        for idx, batch in group_by_shape(views):
            for i, f in zip(idx, backbone(batch).chunk(len(idx))):
                feats[i] = f
        pooled = torch.cat(feats)  # type: ignore[arg-type]
        return head(pooled).unflatten(0, (len(views), -1)), pooled

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_views(views)
        n_g = self.views.n_global
        with torch.no_grad():
            teacher, _ = self._logits(self.teacher[0], self.teacher[1], views[:n_g])
        student, pooled = self._logits(self.backbone, self.head, views)
        loss = self.loss_fn(teacher, student)
        return {"loss": loss, GLOBAL_FEATURES: pooled[: n_g * views[0].shape[0]]}

    def forward_pair(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float = 1.0, use_mfa: bool = True,
                     key_mask: torch.Tensor | None = None) -> PairResult:
        paired = self.backbone.forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask)
        student = self.head(self.backbone.pool(torch.cat([paired.out_l, paired.out_r]))).unflatten(0, (2, -1))
        with torch.no_grad():
            t = self.teacher[0].forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask)
            teacher = self.teacher[1](self.teacher[0].pool(torch.cat([t.out_l, t.out_r]))).unflatten(0, (2, -1))
        loss = self.pair_loss_fn(teacher, student)
        return PairResult({"loss": loss}, paired, None)
