"""The interface of a base self-supervised objective, and the small helpers they share.

An objective owns the student backbone (and, where the method has one, a momentum teacher and
heads). It has two entry points with the same output, a dict of named scalar losses:

- :meth:`BaseObjective.forward` on the standard augmented views (a list of ``(B, C, *S)`` tensors,
  global views first);
- :meth:`BaseObjective.forward_pair` on a mirror pair, through the backbone's paired forward
  (Mirror-Fusion Attention at layer ``l``); it also returns the :class:`PairedOutput` so the method
  can compute the symmetry losses on the pre-fusion tokens.

``loss`` in the returned dict is the objective's total; other entries are parts for logging, except
:data:`GLOBAL_FEATURES`: an objective whose student encodes the whole global views (DINO, MoCo-v3) returns their
pooled features under that key, ``(n_global * B, D)`` with gradient, in view order (``torch.cat`` of the
global views), so that a head on the encoder's representation (``MFASSL``'s flip head) reuses that pass
instead of encoding the views again. ``MFASSL`` takes the entry out before anything is logged. Objectives
that encode masked views (MAE, DAGMaN, MixedAE) leave it out.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar, NamedTuple, Sequence

import torch
import torch.nn as nn

from mfassl.backbones import MFABackbone, PairedOutput
from mfassl.rng import rand

__all__ = [
    "GLOBAL_FEATURES",
    "BaseObjective",
    "PairResult",
    "ViewSpec",
    "update_momentum",
    "deactivate_requires_grad",
    "random_ranks",
    "random_token_mask",
    "topk_mask",
    "patchify",
    "unpatchify",
    "group_by_shape",
]


class ViewSpec(NamedTuple):
    """How many standard views an objective wants: ``n_global`` large crops and ``n_local`` small ones."""

    n_global: int
    n_local: int


GLOBAL_FEATURES = "global_features"
"""Key of the pooled student features of the global views in an objective's output (not a loss)."""


class PairResult(NamedTuple):
    """What :meth:`BaseObjective.forward_pair` returns.

    Attributes:
        losses: named scalar losses, ``"loss"`` the total.
        paired: the student's :class:`PairedOutput`.
        token_mask: ``(B, N)`` bool of hidden input tokens (masked objectives), else None.
    """

    losses: dict[str, torch.Tensor]
    paired: PairedOutput
    token_mask: torch.Tensor | None


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """``ema = m * ema + (1 - m) * model`` for every parameter (buffers are copied)."""
    params, params_ema = list(model.parameters()), list(model_ema.parameters())
    if params_ema:  # one fused pass over all tensors (the same two ops per tensor as a loop)
        torch._foreach_mul_(params_ema, m)
        torch._foreach_add_(params_ema, params, alpha=1.0 - m)
    for b, be in zip(model.buffers(), model_ema.buffers()):
        be.copy_(b)


def deactivate_requires_grad(model: nn.Module) -> nn.Module:
    """Freeze all parameters of ``model`` (in place) and return it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_ranks(batch: int, num_tokens: int, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, N)`` long: each row a uniformly random permutation of ``0 .. N - 1`` (the rank of its noise)."""
    noise = rand(batch, num_tokens, generator=generator, device=device)
    return noise.argsort(dim=1).argsort(dim=1)


def random_token_mask(batch: int, num_tokens: int, ratio: float, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, N)`` bool, True for the ``round(ratio * N)`` hidden tokens of each row (uniformly at random)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}.")
    n_hide = int(round(ratio * num_tokens))
    return random_ranks(batch, num_tokens, device, generator) < n_hide


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the same shape as ``scores`` ``(..., N)``: True at the ``k`` largest entries of each row."""
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(int(k), dim=-1).indices, True)


def patchify(images: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, N, prod(p) * C)`` patches in row-major grid order (2D and 3D).

    Each patch is flattened pixel-major, channel last; a border that does not fill a patch is dropped.
    """
    b, c = images.shape[:2]
    dims = images.ndim - 2
    grid = [s // p for s, p in zip(images.shape[2:], patch_size)]
    shape = [b, c]
    for g, p in zip(grid, patch_size):
        shape += [g, p]
    x = images[(slice(None), slice(None), *[slice(0, g * p) for g, p in zip(grid, patch_size)])].reshape(shape)
    grid_axes = [2 + 2 * i for i in range(dims)]
    patch_axes = [3 + 2 * i for i in range(dims)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)
    return x.reshape(b, math.prod(grid), -1)


def unpatchify(patches: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, prod(p) * C)`` with ``N = prod(grid)`` -> ``(B, C, *(g * p))``."""
    b, d = patches.shape[0], len(grid)
    x = patches.reshape(b, *grid, *patch_size, channels)
    perm = [0, 2 * d + 1]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    return x.permute(*perm).reshape(b, channels, *[g * p for g, p in zip(grid, patch_size)])


def group_by_shape(views: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """Group views of one spatial shape into one batch: ``[(view indices, (k*B, C, *S)), ...]``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(tuple(v.shape[1:]), []).append(i)
    return [(idx, torch.cat([views[i] for i in idx])) for idx in groups.values()]


class BaseObjective(nn.Module):
    """Base class of the self-supervised objectives (views in, dict of named losses out).

    Args:
        backbone: the student :class:`~mfassl.backbones.MFABackbone`.

    Subclasses set ``name``, ``views`` (:class:`ViewSpec`) and ``momentum`` (the teacher's starting
    momentum, or None when there is no teacher).
    """

    name: ClassVar[str] = "base"
    views: ClassVar[ViewSpec] = ViewSpec(2, 0)
    momentum: ClassVar[float | None] = None

    def __init__(self, backbone: MFABackbone) -> None:
        super().__init__()
        self.backbone = backbone

    # ---------------------------------------------------------------- teacher helpers
    def _make_teacher(self, *modules: nn.Module) -> nn.ModuleList:
        return deactivate_requires_grad(nn.ModuleList([copy.deepcopy(m) for m in modules]))

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) module pairs updated by :meth:`update_teacher`; empty without a teacher."""
        return []

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA update of every teacher module with ``momentum`` (no-op without a teacher)."""
        for student, teacher in self.student_teacher_pairs():
            update_momentum(student, teacher, momentum)

    # ---------------------------------------------------------------- entry points
    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses on the standard views (list of ``(B, C, *S)``, global views first)."""
        raise NotImplementedError

    def forward_pair(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float = 1.0, use_mfa: bool = True,
                     key_mask: torch.Tensor | None = None) -> PairResult:
        """Losses on a mirror pair ``(B, C, *M)`` x 2 after Mirror-Fusion Attention."""
        raise NotImplementedError

    def check_views(self, views: Sequence[torch.Tensor]) -> None:
        need = self.views.n_global
        if len(views) < need:
            raise ValueError(f"{self.name} needs at least {need} global views, got {len(views)}.")

    def extra_state(self) -> dict[str, Any]:
        """Scalars worth logging besides the losses (e.g. attention statistics)."""
        return {}

    def set_epoch(self, epoch: float) -> None:
        """Set what depends on the fractional training epoch (e.g. DINO's teacher-temperature warm-up);
        :class:`~mfassl.method.MFASSL` calls it before every step. Nothing by default."""
