"""The run's schedules as ignite handlers: each sets one value before every step.

- :class:`OptimizerParamSchedule` (an ignite ``ParamScheduler``): an optimizer hyper-parameter (``lr``,
  ``weight_decay``) of all or some param groups, e.g. :func:`lr_schedule` (warm-up + cosine) and
  :func:`weight_decay_schedule` (DINO's cosine weight decay, on the groups that decay).
- :class:`StateParamSchedule` (an ignite ``LambdaStateScheduler``): a value on ``engine.state`` that a handler
  reads, e.g. :func:`teacher_momentum_schedule` (``engine.state.teacher_momentum``, which
  :class:`~mfassl.handlers.TeacherEMA` applies after the optimizer step).

Two things differ from ignite's schedulers, and both serve the trainer's exact resume:

- the schedule's index is the trainer's iteration (0 for the first step), not a count of the scheduler's own
  calls, so a trainer resumed from a checkpoint continues every schedule where it stopped although no scheduler
  is in the checkpoint (a schedule attached to a resumed run included); outside a run (ignite's
  ``simulate_values``, an engine at iteration 0) it counts calls as ignite does;
- each publishes its value in ``engine.state.scheduled[output_key]``, which the trainer's step adds to its
  record: TensorBoard, the history and MONAI's handlers log every schedule with no code of their own.

A new schedule joins a run by attaching (``schedule.attach(trainer)``, or in a bundle's ``train#handlers``);
nothing in :func:`mfassl.engine.create_trainer` names it. The formulas are :mod:`mfassl.schedules`'.

Example::

    trainer = create_trainer(method, optimizer, steps_per_epoch, max_epochs=100, batch_size=64)
    weight_decay_schedule(optimizer, 0.04, 0.4, total_steps=steps_per_epoch * 100).attach(trainer)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from ignite.engine import CallableEventWithFilter, Engine, Events, EventsList
from ignite.handlers import LambdaStateScheduler, ParamScheduler

from mfassl.options import require
from mfassl.schedules import cosine_momentum, warmup_cosine

__all__ = [
    "OptimizerParamSchedule",
    "StateParamSchedule",
    "lr_schedule",
    "publish",
    "teacher_momentum_schedule",
    "weight_decay_schedule",
]


def publish(engine: Engine, key: str, value: float) -> None:
    """Put a schedule's value for this step in ``engine.state.scheduled[key]`` (the step's record takes them)."""
    values = getattr(engine.state, "scheduled", None)
    if not isinstance(values, dict):
        values = engine.state.scheduled = {}
    values[key] = float(value)


def _step_index(engine: Engine | None, counted: int) -> int:
    """The schedule's index for this call: the trainer's 0-based step, or ``counted`` outside a run."""
    iteration = int(engine.state.iteration) if engine is not None else 0
    return iteration - 1 if iteration > 0 else counted


class OptimizerParamSchedule(ParamScheduler):
    """``optimizer.param_groups[i][param_name] = fn(step)`` before every step, for the chosen groups.

    Args:
        optimizer: the optimizer (anything with ``param_groups``).
        param_name: the hyper-parameter (``"lr"``, ``"weight_decay"``).
        fn: the value at a 0-based step.
        groups: indices of the param groups it sets (None: all).
        output_key: the name in the step's record (default ``param_name``).
        save_history: ignite's ``engine.state.param_history``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, param_name: str, fn: Callable[[int], float], *,
                 groups: Sequence[int] | None = None, output_key: str | None = None,
                 save_history: bool = False) -> None:
        super().__init__(optimizer, param_name, save_history=save_history)
        n = len(optimizer.param_groups)
        self.groups = None if groups is None else [int(i) for i in groups]
        if self.groups is not None and (not self.groups or any(not 0 <= i < n for i in self.groups)):
            raise ValueError(f"{type(self).__name__}({param_name!r}): groups {list(groups)} are not param groups of "
                             f"an optimizer with {n}.")
        self.fn = fn
        self.output_key = output_key or param_name

    @property
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        groups = self.optimizer.param_groups
        return list(groups) if self.groups is None else [groups[i] for i in self.groups]

    def get_param(self) -> float:
        return float(self.fn(self.event_index))

    def __call__(self, engine: Engine | None, name: str | None = None) -> None:
        self.event_index = _step_index(engine, self.event_index)
        super().__call__(engine, name)
        if engine is not None:
            publish(engine, self.output_key, self.optimizer_param_groups[0][self.param_name])


class StateParamSchedule(LambdaStateScheduler):
    """``engine.state.<param_name> = fn(step)`` before every step (attached on ``ITERATION_STARTED``).

    Args:
        fn: the value at a 0-based step.
        param_name: the ``engine.state`` attribute (a handler reads it there).
        output_key: the name in the step's record (default ``param_name``).
        save_history: ignite's ``engine.state.param_history``.
    """

    def __init__(self, fn: Callable[[int], float], param_name: str, *, output_key: str | None = None,
                 save_history: bool = False) -> None:
        super().__init__(fn, param_name, save_history=save_history, create_new=True)
        self.output_key = output_key or param_name

    def attach(self, engine: Engine,
               event: str | Events | CallableEventWithFilter | EventsList = Events.ITERATION_STARTED) -> None:
        super().attach(engine, event)

    def __call__(self, engine: Engine) -> None:
        step = _step_index(engine, self.event_index)
        self.event_index = step + 1
        value = float(self.lambda_obj(step))
        setattr(engine.state, self.param_name, value)
        if self.save_history:
            engine.state.param_history[self.param_name].append(value)
        publish(engine, self.output_key, value)


def lr_schedule(optimizer: torch.optim.Optimizer, *, peak_lr: float, min_lr: float, warmup_steps: float,
                total_steps: int) -> OptimizerParamSchedule:
    """The learning rate of every param group: linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``
    (fractional allowed), then cosine to ``min_lr`` at ``total_steps`` (:func:`~mfassl.schedules.warmup_cosine`);
    ``lr`` in the record."""
    return OptimizerParamSchedule(optimizer, "lr", partial(warmup_cosine, total_steps=total_steps,
                                                           warmup_steps=warmup_steps, peak=peak_lr, final=min_lr))


def teacher_momentum_schedule(start: float, end: float, total_steps: int) -> StateParamSchedule:
    """``engine.state.teacher_momentum`` along a half cosine from ``start`` to ``end`` at ``total_steps``
    (:func:`~mfassl.schedules.cosine_momentum`); ``momentum`` in the record."""
    return StateParamSchedule(partial(cosine_momentum, total_steps=total_steps, start=start, end=end),
                              "teacher_momentum", output_key="momentum")


def weight_decay_schedule(optimizer: torch.optim.Optimizer, start: float, end: float,
                          total_steps: int) -> OptimizerParamSchedule:
    """DINO's weight-decay schedule: a half cosine from ``start`` to ``end`` (0.04 to 0.4 in DINO) at
    ``total_steps``, on the param groups that decay (``weight_decay > 0`` now: the biases, norms and scalars of
    :func:`~mfassl.engine.create_optimizer` keep 0); ``weight_decay`` in the record.

    Raises:
        ValueError: no param group has weight decay, or a value of the wrong type or out of range.
    """
    start, end = require(start, "start", float, low=0.0), require(end, "end", float, low=0.0)
    total_steps = require(total_steps, "total_steps", int, low=1)
    groups = [i for i, g in enumerate(optimizer.param_groups) if g.get("weight_decay", 0.0) > 0]
    if not groups:
        raise ValueError("weight_decay_schedule: no param group of the optimizer has weight decay to schedule.")
    return OptimizerParamSchedule(optimizer, "weight_decay", partial(warmup_cosine, total_steps=total_steps,
                                                                     warmup_steps=0.0, peak=start, final=end),
                                  groups=groups)
