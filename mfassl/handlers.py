"""The trainer's handlers: what :func:`mfassl.engine.create_trainer` attaches around the step, and the logging ones.

Each is an object (or function) that ignite attaches to an event; the step itself only computes.

- :class:`TrainEvents`: the events the step fires inside an iteration (ignite's custom events):
  ``FORWARD_COMPLETED`` (the forward's outputs in ``engine.state.forward_output``, before any gradient) and
  ``OPTIMIZER_STEP_COMPLETED`` (the weights just updated).
- :class:`StopOnNonFinite`: on ``FORWARD_COMPLETED``, a non-finite loss raises ``FloatingPointError`` naming
  every non-finite term, before the backward touches the weights (ignite's ``TerminateOnNan`` looks after the
  update and ends the run as if it had completed, so the last checkpoint would hold the broken weights).
- :class:`TeacherEMA`: on ``OPTIMIZER_STEP_COMPLETED``, the teacher's EMA update with the momentum the
  teacher-momentum schedule set (``engine.state.teacher_momentum``, :mod:`mfassl.schedule_handlers`).
- :func:`set_sampler_epoch`: on ``EPOCH_STARTED``, the epoch to every sampler of the loader that takes one.
- :class:`EpochMetrics`, :class:`ProgressHandler`, :class:`TensorBoardHandler`: the epoch means in
  ``engine.state.metrics``, a progress bar, the step's scalars in TensorBoard; :func:`step_record` reads the
  step's output (a dict, or MONAI's list of one dict).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, EventEnum, Events

from mfassl.options import require

__all__ = [
    "EpochMetrics",
    "ProgressHandler",
    "StopOnNonFinite",
    "TeacherEMA",
    "TensorBoardHandler",
    "TrainEvents",
    "set_sampler_epoch",
    "step_record",
]

logger = logging.getLogger(__name__)


class TrainEvents(EventEnum):
    """Events the trainer's step fires between ignite's ``ITERATION_STARTED`` and ``ITERATION_COMPLETED``.

    ``FORWARD_COMPLETED``: the forward ran; ``engine.state.forward_output`` is its dict of tensors (``loss`` and
    the terms), nothing has touched the gradients yet. ``OPTIMIZER_STEP_COMPLETED``: the optimizer has updated
    the weights (a handler here sees the new student, e.g. :class:`TeacherEMA`).
    """

    FORWARD_COMPLETED = "forward_completed"
    OPTIMIZER_STEP_COMPLETED = "optimizer_step_completed"


class StopOnNonFinite:
    """Stop the run when the step's loss is NaN or infinite, before the weights are touched.

    Attached to :attr:`TrainEvents.FORWARD_COMPLETED`, it reads ``engine.state.forward_output``; when one of
    ``keys`` is not finite it raises ``FloatingPointError`` naming the iteration and every non-finite output (so
    a NaN in ``l_eq`` is told apart from one in ``base``). The last checkpoint on disk is the last good state.

    Args:
        keys: the outputs that stop the run when not finite (``("loss",)``: the total, which every term reaches).
    """

    def __init__(self, keys: Sequence[str] = ("loss",)) -> None:
        self.keys = tuple(keys)

    def attach(self, engine: Engine) -> "StopOnNonFinite":
        engine.add_event_handler(TrainEvents.FORWARD_COMPLETED, self)
        return self

    def __call__(self, engine: Engine) -> None:
        out: Mapping[str, Any] = engine.state.forward_output
        stopping = [k for k in self.keys if k in out and not bool(torch.isfinite(torch.as_tensor(out[k])).all())]
        if not stopping:
            return
        values = {k: float(torch.as_tensor(v).detach()) for k, v in out.items()
                  if isinstance(v, (torch.Tensor, int, float)) and torch.as_tensor(v).numel() == 1}
        bad = ", ".join(f"{k} {v}" for k, v in values.items() if not math.isfinite(v))
        raise FloatingPointError(f"{stopping[0]} is {values.get(stopping[0], 'not finite')} at iteration "
                                 f"{engine.state.iteration} (non-finite terms: {bad}); stopping before the weights "
                                 "are corrupted (the last checkpoint is intact).")


class TeacherEMA:
    """The teacher's EMA update after each optimizer step: ``method.update_teacher(engine.state.<state_key>)``.

    The momentum is a schedule's value (:func:`mfassl.schedule_handlers.teacher_momentum_schedule` sets
    ``engine.state.teacher_momentum`` before every step), so another momentum schedule replaces that one alone.

    Args:
        method: the module with ``update_teacher(momentum)`` (an :class:`~mfassl.method.MFASSL`, unwrapped).
        state_key: the ``engine.state`` attribute holding the momentum (``teacher_momentum``).
    """

    def __init__(self, method: nn.Module, state_key: str = "teacher_momentum") -> None:
        if not callable(getattr(method, "update_teacher", None)):
            raise TypeError(f"TeacherEMA needs a module with update_teacher(momentum); got {type(method).__name__}.")
        self.method, self.state_key = method, state_key

    def attach(self, engine: Engine) -> "TeacherEMA":
        engine.add_event_handler(TrainEvents.OPTIMIZER_STEP_COMPLETED, self)
        return self

    def __call__(self, engine: Engine) -> None:
        self.method.update_teacher(float(getattr(engine.state, self.state_key)))


def set_sampler_epoch(engine: Engine) -> None:
    """Tell the data loader's samplers (``DistributedSampler``, MONAI's included) which epoch starts (0-based).

    A ``DistributedSampler`` shuffles by its epoch number, which nothing else sets: without this every epoch
    reads the data in the first epoch's order. Keyed on the engine's epoch, so a resumed run gets its order. The
    sampler may sit behind batch samplers: ignite's ``DeterministicEngine`` rebuilds the loader around a
    ``ReproducibleBatchSampler`` that wraps the original ``BatchSampler`` and its sampler.
    """
    seen: set[int] = set()
    todo = [getattr(engine.state.dataloader, name, None) for name in ("sampler", "batch_sampler")]
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(engine.state.epoch - 1)
        todo += [getattr(obj, name, None) for name in ("sampler", "batch_sampler")]


def step_record(output: Any) -> dict[str, Any]:
    """The step's dict of outputs from ``engine.state.output``: the dict itself, the first record of a decollated
    list (``decollate=True``), or ``{}`` before the first step."""
    if isinstance(output, (list, tuple)):
        output = output[0] if output else None
    return dict(output) if isinstance(output, Mapping) else {}


class EpochMetrics:
    """Puts the epoch mean of every finite scalar of the step's output (losses, ``gate_mean``, ``w``, ``lr``...)
    into ``engine.state.metrics`` when an epoch completes, where MONAI's ``StatsHandler``,
    ``TensorBoardStatsHandler`` and ``MLFlowHandler`` (``--tracking mlflow``) log a trainer's metrics.

    Attach it before those handlers (earlier in a bundle's ``train#handlers``): handlers of one event run in
    the order they were attached.

    Args:
        skip: outputs left out (``epoch_float``: the position in the schedule, not a quantity to average).
    """

    def __init__(self, skip: Sequence[str] = ("epoch_float",)) -> None:
        self.skip = set(skip)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def attach(self, engine: Engine) -> "EpochMetrics":
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)
        return self

    def _reset(self, engine: Engine) -> None:
        self._sums, self._counts = {}, {}

    def _add(self, engine: Engine) -> None:
        for k, v in step_record(engine.state.output).items():
            if k not in self.skip and isinstance(v, (int, float)) and math.isfinite(v):
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
                self._counts[k] = self._counts.get(k, 0) + 1

    def _publish(self, engine: Engine) -> None:
        engine.state.metrics.update({k: s / self._counts[k] for k, s in self._sums.items()})


class ProgressHandler:
    """A progress bar (rank 0) showing the step's ``keys``.

    Args:
        keys: outputs shown (``loss``, ``gate_mean``).
        enabled: False attaches nothing (a bool: a bundle parses ``--progress false`` with
            :func:`mfassl.options.as_bool`).
    """

    def __init__(self, keys: Sequence[str] = ("loss", "gate_mean"), enabled: bool = True) -> None:
        self.keys = tuple(keys)
        self.enabled = require(enabled, "progress", bool)

    def attach(self, engine: Engine) -> "ProgressHandler":
        from ignite.handlers import ProgressBar

        if self.enabled and idist.get_rank() == 0:
            ProgressBar(persist=False, bar_format=None).attach(
                engine, output_transform=lambda out: {k: v for k, v in step_record(out).items() if k in self.keys})
        return self


class TensorBoardHandler:
    """Every finite scalar of the step's output as ``train/<name>`` at its iteration (rank 0).

    A resumed run purges the events after the checkpoint's iteration, so the curves hold each step once.

    Args:
        log_dir: the TensorBoard folder (``<output_dir>/tb``).
        enabled: False attaches nothing (a bool).
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = require(enabled, "tensorboard", bool)
        self.writer: Any = None

    def attach(self, engine: Engine) -> "TensorBoardHandler":
        if not self.enabled or idist.get_rank() != 0:
            return self
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.writer is not None and self.writer.flush())
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.state.tensorboard_dir = str(self.log_dir)
        return self

    def _open(self, engine: Engine) -> None:
        from torch.utils.tensorboard import SummaryWriter

        it = int(engine.state.iteration)
        self._close(engine)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=it + 1 if it > 0 else None)

    def _write(self, engine: Engine) -> None:
        for k, v in step_record(engine.state.output).items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"train/{k}", v, engine.state.iteration)

    def _close(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
