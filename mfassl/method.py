"""MFASSL: a base SSL objective plus the mirror branch, the symmetry losses and their schedule.

``Total = L_base(standard views) + beta * L_base(mirror pair, post-fusion)
          + w(t) * (lambda_eq * L_eq + lambda_mid * L_mid)``

with ``L_eq`` / ``L_mid`` on the pre-fusion tokens of layer ``l``, MFA skipped before ``t_mfa`` and its
gate ramped by ``r_t`` (:class:`~mfassl.schedules.SymmetrySchedule`). ``mirror=False`` is the baseline:
the same objective on the same standard views (with the random flip), no mirror branch.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mfassl.backbones import MFABackbone, create_backbone
from mfassl.losses import ReflectionConsistencyLoss, TokenAlignmentLoss
from mfassl.objectives import GLOBAL_FEATURES, BaseObjective, create_objective
from mfassl.options import as_bool, as_float
from mfassl.pairing import default_split_dim, mirror_pair, pair_key_mask
from mfassl.schedules import ScheduleState, SymmetrySchedule
from mfassl.views import MultiCropViews

__all__ = ["MFASSL", "FlipHead"]

logger = logging.getLogger(__name__)


class FlipHead(nn.Module):
    """Predicts whether a view was flipped from its pooled feature: ``(B, C)`` -> ``(B,)`` logits.

    Linear -> BatchNorm -> ReLU -> Linear, the small predictor of E-SSL (the batch norm also rescales the
    small feature differences of an encoder at initialisation).

    Args:
        dim: feature width ``C``.
        hidden: hidden width (default ``C``).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class MFASSL(nn.Module):
    """Mirror-Fusion-Augmented Self-Supervised Learning.

    Args:
        backbone: an :class:`~mfassl.backbones.MFABackbone`, or a registered backbone name built with
            ``backbone_kwargs``.
        objective: base objective name (``dino``, ``mocov3``, ``mae``, ``dagman``, ``mixedae``) or instance.
        objective_kwargs: arguments of the objective (head sizes, temperatures, mask ratio...).
        mirror: False gives the baseline (no mirror branch).
        beta: weight of the base objective on the mirror pair (1.0).
        lambda_eq: weight of ``L_eq`` (0.5).
        lambda_mid: weight of ``L_mid`` (1.0).
        t_sym: epochs for ``w(t)`` to reach 1 (10).
        t_mfa: epoch from which MFA is used (12).
        t_gate: epochs of the gate ramp after ``t_mfa`` (10).
        mirror_size: spatial size of each half of the mirror pair (224 published; default the global view size).
        axis_jitter: training jitter of the axis, share of the width (0.03).
        split_dim: the left-right spatial dimension (default: columns in 2D, x in 3D).
        views: arguments of :class:`~mfassl.views.MultiCropViews` (sizes, scales, ``n_local``, flip...);
            ``n_global``/``n_local`` default to the objective's needs.
        backbone_kwargs: arguments when ``backbone`` is a name.
        flip_prediction: weight of an E-SSL-style equivariant loss (0 = off, the published method): a small
            head predicts from each global view's pooled feature ``(B, embed_dim)`` whether the view was
            flipped (binary cross-entropy); needs ``views["flip_prob"] > 0``. With ``mirror=False`` this is the
            equivariant baseline. The outputs then carry ``flip_loss`` and ``flip_acc``.

    Example::

        >>> net = MFAViT(2, img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4)
        >>> method = MFASSL(net, "dino", dict(out_dim=512, hidden_dim=128, bottleneck_dim=64),
        ...                 views=dict(global_size=64, local_size=32, n_local=2))
        >>> out = method(torch.randn(4, 1, 96, 96), epoch=15.0)
        >>> out["loss"].backward()
    """

    def __init__(self, backbone: MFABackbone | str, objective: str | BaseObjective = "dino",
                 objective_kwargs: dict[str, Any] | None = None, mirror: bool = True, beta: float = 1.0,
                 lambda_eq: float = 0.5, lambda_mid: float = 1.0, t_sym: float = 10.0, t_mfa: float = 12.0,
                 t_gate: float = 10.0, mirror_size: int | Sequence[int] | None = None, axis_jitter: float = 0.03,
                 split_dim: int | None = None, views: dict[str, Any] | None = None,
                 backbone_kwargs: dict[str, Any] | None = None, flip_prediction: float = 0.0) -> None:
        super().__init__()
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, **(backbone_kwargs or {}))
        if isinstance(objective, str):
            objective = create_objective(objective, backbone, **(objective_kwargs or {}))
        elif objective.backbone is not backbone:
            raise ValueError("the objective must be built on the same backbone instance.")
        self.objective = objective
        self.mirror = as_bool(mirror, "mirror")  # "false" from a command line is the baseline, not bool("false")
        self.beta, self.lambda_eq, self.lambda_mid = (
            as_float(v, k, low=0.0) for k, v in (("beta", beta), ("lambda_eq", lambda_eq), ("lambda_mid", lambda_mid)))
        self.schedule = SymmetrySchedule(*(as_float(v, k, low=0.0, allow_inf=True) for k, v in
                                           (("t_sym", t_sym), ("t_mfa", t_mfa), ("t_gate", t_gate))))
        self.axis_jitter = as_float(axis_jitter, "axis_jitter", low=0.0)
        dims = backbone.spatial_dims
        self.split_dim = default_split_dim(dims) if split_dim is None else int(split_dim)
        view_args = {"n_global": objective.views.n_global, "n_local": objective.views.n_local,
                     "spatial_dims": dims, "flip_dim": self.split_dim, **(views or {})}
        self.views = MultiCropViews(**view_args)
        self.mirror_size = tuple(self.views.global_size) if mirror_size is None else mirror_size
        self.eq_loss = ReflectionConsistencyLoss()
        self.mid_loss = TokenAlignmentLoss()
        self.flip_prediction = as_float(flip_prediction, "flip_prediction", low=0.0)
        # built only when used, so that the default draws no extra random numbers and has no extra parameters
        self.flip_head = FlipHead(backbone.embed_dim) if self.flip_prediction > 0 else None
        if self.flip_head is not None and self.views.flip_prob in (0.0, 1.0):
            logger.warning("flip_prediction=%s with flip_prob=%s: every view has the same flip label, the flip head "
                           "has nothing to learn.", self.flip_prediction, self.views.flip_prob)

    @property
    def backbone(self) -> MFABackbone:
        """The student encoder (what downstream tasks keep)."""
        return self.objective.backbone

    @property
    def teacher_momentum(self) -> float | None:
        """The objective's starting teacher momentum, None without a teacher."""
        return self.objective.momentum

    def update_teacher(self, momentum: float) -> None:
        """EMA update of the objective's teacher (no-op without one)."""
        self.objective.update_teacher(momentum)

    def schedule_at(self, epoch: float) -> ScheduleState:
        """``(w, r_t, mfa_on)`` at a fractional epoch."""
        return self.schedule(epoch)

    def forward(self, images: torch.Tensor, axes: torch.Tensor | None = None, epoch: float = 0.0) -> dict[str, torch.Tensor]:
        """One step's losses.

        Args:
            images: ``(B, C, *S)`` images (canonicalised or not).
            axes: ``(B, D+1)`` symmetry axes ``[n, d]`` in index coordinates of ``images``; None = the image
                centre (already-canonicalised images, or the published behaviour).
            epoch: the fractional epoch ``t`` for the schedule.

        Returns:
            dict with ``loss`` (the total, with gradient) and detached parts: ``base``, ``mirror``,
            ``l_eq``, ``l_mid``, ``gate_mean``, ``mfa_on``, the objective's extras, with ``mirror`` on also ``w`` and
            ``ramp`` (the schedule) and, with ``flip_prediction > 0``, ``flip_loss`` and ``flip_acc``.
        """
        self.objective.set_epoch(epoch)
        views = self.views(images)  # drawn first: the baseline and MFASSL see the same views
        base = dict(self.objective(views))
        features = base.pop(GLOBAL_FEATURES, None)  # (n_global * B, D) pooled student features, or None
        total = base["loss"]
        zero = total.detach() * 0.0
        out: dict[str, torch.Tensor] = {f"base_{k}" if k != "loss" else "base": v.detach() for k, v in base.items()}
        if self.flip_head is not None:
            n_global = self.views.n_global
            flipped = torch.cat(self.views.last_flips[:n_global]).to(total.device)
            if features is None or features.shape[0] != flipped.shape[0]:
                features = self.backbone(torch.cat(views[:n_global]))  # the objective encoded masked views
            logits = self.flip_head(features)
            flip_loss = F.binary_cross_entropy_with_logits(logits, flipped.float())
            total = total + self.flip_prediction * flip_loss
            out.update(flip_loss=flip_loss.detach(), flip_acc=((logits > 0) == flipped).float().mean())
        state = self.schedule(epoch)
        if self.mirror:
            bb = self.backbone
            pair = mirror_pair(images, axes, self.mirror_size, split_dim=self.split_dim,
                               jitter=self.axis_jitter if self.training else 0.0)
            key_mask = pair_key_mask(pair, bb.mfa_patch_size)
            res = self.objective.forward_pair(pair.x_l, pair.x_r, ramp=state.ramp, use_mfa=state.mfa_on,
                                              key_mask=key_mask)
            pf = res.paired
            mask = key_mask
            if res.token_mask is not None and pf.pre_l.shape[1] != key_mask.shape[1]:
                mask = key_mask[~res.token_mask].reshape(key_mask.shape[0], -1)
            l_eq = self.eq_loss(pf.pre_l, pf.pre_r, mask)
            l_mid = self.mid_loss(pf.pre_l, pf.pre_r, mask)
            total = total + self.beta * res.losses["loss"] + state.w * (self.lambda_eq * l_eq + self.lambda_mid * l_mid)
            gate = pf.gate_l
            gate_mean = zero if gate is None else (gate * mask).sum().detach() / mask.sum().clamp(min=1)
            out.update(mirror=res.losses["loss"].detach(), l_eq=l_eq.detach(), l_mid=l_mid.detach(), gate_mean=gate_mean)
            out.update({f"mirror_{k}": v.detach() for k, v in res.losses.items() if k != "loss"})
            out.update(w=zero + state.w, ramp=zero + state.ramp)  # the schedule of the symmetry terms and the gate
        else:  # the flip baseline: no symmetry terms, so no schedule of them to report
            out.update(mirror=zero, l_eq=zero, l_mid=zero, gate_mean=zero)
        out.update(mfa_on=zero + float(state.mfa_on and self.mirror))
        for k, v in self.objective.extra_state().items():
            out[k] = torch.as_tensor(v, dtype=zero.dtype, device=zero.device)
        out["loss"] = total
        return out
