"""Tiny models, methods and the training loop shared by the core tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from mfassl.backbones import MFASwin, MFAViT
from mfassl.method import MFASSL

OBJECTIVE_KWARGS = {
    "dino": dict(out_dim=128, hidden_dim=64, bottleneck_dim=32),
    "mocov3": dict(proj_hidden_dim=64, out_dim=32, pred_hidden_dim=64),
    "mae": dict(decoder_dim=48, decoder_heads=4, decoder_depth=1),
}


def tiny_backbone(dims: int = 2, kind: str = "vit", in_chans: int = 1):
    if kind == "swin":
        return MFASwin(dims, in_chans=in_chans, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                       window_size=4, mfa_stage=2)
    if dims == 2:
        return MFAViT(2, img_size=32, patch_size=8, in_chans=in_chans, embed_dim=32, depth=3, num_heads=4)
    return MFAViT(3, img_size=16, patch_size=8, in_chans=in_chans, embed_dim=32, depth=2, num_heads=4)


def tiny_method(objective: str = "dino", dims: int = 2, mirror: bool = True, kind: str = "vit", seed: int = 0,
                **kwargs) -> MFASSL:
    torch.manual_seed(seed)
    size = 32 if (dims == 2 or kind == "swin") else 16
    if kind == "swin" and dims == 3:
        size = 32
    views = dict(global_size=size, local_size=size // 2, n_local=2 if objective == "dino" else 0)
    kw = dict(t_sym=1.0, t_mfa=0.0, t_gate=1.0)
    kw.update(kwargs)
    return MFASSL(tiny_backbone(dims, kind), objective, OBJECTIVE_KWARGS.get(objective, {}), mirror=mirror,
                  views=views, **kw)


@dataclass
class Fit:
    """What :func:`train_steps` returns.

    Attributes:
        history: every step's outputs as floats, taken before that step's update.
    """

    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        """The ``"loss"`` of every step."""
        return self.curve("loss")

    @property
    def last(self) -> dict[str, float]:
        """The last step's outputs."""
        return self.history[-1]

    def curve(self, key: str) -> list[float]:
        """Output ``key`` of every step."""
        return [h[key] for h in self.history]

    def ratio(self, k: int, key: str = "loss") -> float:
        """Mean of output ``key`` over the last ``k`` steps, divided by its mean over the first ``k``."""
        values = self.curve(key)
        if not 0 < k <= len(values) // 2:
            raise ValueError(f"k must lie in [1, {len(values) // 2}], got {k}.")
        return (sum(values[-k:]) / k) / (sum(values[:k]) / k)


def train_steps(model: nn.Module, step: Callable[[], dict[str, torch.Tensor]], steps: int, lr: float = 2e-3, *,
                teacher_momentum: float | None = None, seed: int | None = None, clip_grad: float | None = None,
                weight_decay: float = 0.01, after_step: Callable[[int], None] | None = None,
                threads: int | None = 1) -> Fit:
    """Train ``model`` with AdamW for ``steps`` steps of ``step()`` (a dict with a ``"loss"`` to minimise).

    Args:
        model: whose trainable parameters are optimised; ``model.update_teacher(m)`` runs after each update
            when ``teacher_momentum`` is given.
        step: computes one step's outputs (the batch is the closure's).
        steps: optimiser steps.
        lr: AdamW learning rate.
        teacher_momentum: EMA momentum of the teacher, None for objectives without one.
        seed: when given, every step starts from ``torch.manual_seed(seed)``, so views, masks and noise are
            drawn alike at every step (a fixed batch: the curve measures fitting, not one draw against
            another); None keeps the global random stream running (fresh draws, as in training).
        clip_grad: max gradient norm, None to disable.
        weight_decay: AdamW weight decay.
        after_step: called with the step index after each update (and teacher update).
        threads: intra-op threads during the loop (restored after), None to keep the current setting. One by
            default: tiny models gain nothing from more, and on a busy machine idle threads spinning in
            their thread pool multiply the CPU time of a run several times over.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    fit = Fit()
    try:
        for i in range(steps):
            if seed is not None:
                torch.manual_seed(seed)
            out = step()
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            opt.step()
            if teacher_momentum is not None:
                model.update_teacher(teacher_momentum)
            fit.history.append({k: float(torch.as_tensor(v).detach()) for k, v in out.items()})
            if after_step is not None:
                after_step(i)
    finally:
        torch.set_num_threads(previous)
    return fit


class FixedViews:
    """Multi-crop views drawn from no random stream: the same images always give the same views.

    A stand-in for :class:`~mfassl.views.MultiCropViews` where a run's numbers must depend on the images
    alone (a distributed run checked against a single-process run of the same global batch, whose random
    streams differ). Global view ``g`` is the ``global_size`` crop at offset ``g * stride`` along every
    spatial dim; local view ``l`` is global view ``l % n_global`` resized to ``local_size``. Each view is
    computed per sample, so splitting a batch across processes splits its views alike.

    Args:
        n_global: large views.
        n_local: small views.
        global_size: side of the large views.
        local_size: side of the small views.
        stride: offset between consecutive large views.
    """

    def __init__(self, n_global: int, n_local: int, global_size: int, local_size: int, stride: int = 4) -> None:
        self.n_global, self.n_local = n_global, n_local
        self.global_size, self.local_size, self.stride = global_size, local_size, stride
        self.last_flips: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, *S)`` -> ``n_global`` views ``(B, C, *[global_size])`` then ``n_local`` ``(B, C, *[local_size])``."""
        dims = images.ndim - 2
        size = self.global_size
        crops = []
        for g in range(self.n_global):
            o = g * self.stride
            if any(o + size > s for s in images.shape[2:]):
                raise ValueError(f"view {g} at offset {o} does not fit in {tuple(images.shape[2:])}.")
            crops.append(images[(slice(None), slice(None)) + (slice(o, o + size),) * dims])
        mode = "bilinear" if dims == 2 else "trilinear"
        local = [torch.nn.functional.interpolate(crops[i % self.n_global], size=(self.local_size,) * dims, mode=mode,
                                                 align_corners=False) for i in range(self.n_local)]
        self.last_flips = [torch.zeros(images.shape[0], dtype=torch.bool)] * (self.n_global + self.n_local)
        return crops + local


def fixed_view_dino(seed: int = 0) -> MFASSL:
    """:func:`tiny_method` DINO (2D, mirror branch on) whose every step is a function of its batch alone.

    :class:`FixedViews` replace the random views and the axis jitter is off. The tiny ViT and the DINO head
    keep no batch statistics, so each sample's terms depend on that sample only (and the centre on the
    mean over the whole global batch).
    """
    method = tiny_method("dino", seed=seed, axis_jitter=0.0)
    method.views = FixedViews(method.views.n_global, method.views.n_local, 32, 16)
    return method
