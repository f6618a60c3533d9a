"""Schedules of an MFASSL run, each a pure function of the (fractional) epoch or step.

- :class:`SymmetrySchedule`: ``w(t) = clip(t / t_sym, 0, 1)``; MFA active from ``t >= t_mfa``;
  ``r_t = clip((t - t_mfa) / t_gate, 0, 1)``.
- :func:`warmup_cosine`: linear warm-up then cosine decay (learning rate).
- :func:`cosine_momentum`: teacher momentum ``m_0 -> m_end`` along a half cosine.
- :func:`scaled_lr`: ``base_lr * batch / 256``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["ScheduleState", "SymmetrySchedule", "warmup_cosine", "cosine_momentum", "scaled_lr"]


class ScheduleState(NamedTuple):
    """The symmetry schedule at one time: loss weight ``w``, gate ramp ``r_t`` and whether MFA runs."""

    w: float
    ramp: float
    mfa_on: bool


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


@dataclass(frozen=True)
class SymmetrySchedule:
    """The staged schedule of the symmetry terms, in (fractional) epochs.

    Args:
        t_sym: epochs for ``w(t)`` to reach 1 (10).
        t_mfa: epoch from which the MFA block is used (12).
        t_gate: epochs for the gate ramp ``r_t`` to reach 1 after ``t_mfa`` (10).
    """

    t_sym: float = 10.0
    t_mfa: float = 12.0
    t_gate: float = 10.0

    def __call__(self, epoch: float) -> ScheduleState:
        w = _clip01(epoch / self.t_sym) if self.t_sym > 0 else 1.0
        mfa_on = epoch >= self.t_mfa
        ramp = (_clip01((epoch - self.t_mfa) / self.t_gate) if self.t_gate > 0 else 1.0) if mfa_on else 0.0
        return ScheduleState(w, ramp, mfa_on)


def warmup_cosine(step: float, total_steps: float, warmup_steps: float, peak: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine to ``final`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * step / max(warmup_steps, 1e-12)
    span = max(total_steps - warmup_steps, 1e-12)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def cosine_momentum(step: float, total_steps: float, start: float = 0.996, end: float = 1.0) -> float:
    """Teacher momentum along a half cosine from ``start`` (step 0) to ``end`` (last step)."""
    progress = min(1.0, max(0.0, step / max(total_steps, 1e-12)))
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: ``base_lr * batch_size / 256``."""
    return base_lr * batch_size / 256.0
