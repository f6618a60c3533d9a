"""The training engine every entry point uses (bundles, the face CLI, benchmarks).

:func:`create_trainer` assembles an ignite ``Engine`` from parts, as ignite's own examples do:

- the process function, :class:`TrainStep`: one :class:`~mfassl.method.MFASSL` update (forward, backward,
  gradient clipping, optimizer step, optional AMP on GPU) and nothing around it; it fires
  :class:`~mfassl.handlers.TrainEvents` inside the iteration for the handlers that must act between its parts;
- the schedules, each a handler (:mod:`mfassl.schedule_handlers`, ignite's ``ParamScheduler`` and
  ``LambdaStateScheduler``): the lr's warm-up + cosine (peak ``base_lr * batch / 256``) and the teacher
  momentum's cosine to 1; a further schedule (DINO's weight decay, say) joins by attaching itself;
- :class:`~mfassl.handlers.StopOnNonFinite` (a NaN or infinite loss stops the run before the weights are
  touched, naming the non-finite terms), :class:`~mfassl.handlers.TeacherEMA` (the teacher's EMA after each
  optimizer step), :func:`~mfassl.handlers.set_sampler_epoch` (the epoch to a ``DistributedSampler``);
- the caller's handlers, each an object with ``attach(engine)`` (the bundles list them in JSON; without a list
  the defaults below are attached): :class:`ProgressHandler`, :class:`TensorBoardHandler` (each loss, the gate
  mean, ``r_t``, ``w(t)``, every scheduled value) and :class:`~mfassl.checkpoints.CheckpointSaver`, which is
  handed the trainer's ``to_save`` mapping explicitly (``saver.attach(trainer, to_save)``): the model,
  optimizer, AMP scaler, trainer state (epoch, iteration and RNG states: ignite's ``DeterministicEngine`` makes
  a resumed run draw the same data and augmentations as an uninterrupted one) and the run settings;
- the resume (:mod:`mfassl.resume`): the run-defining settings (batch size, steps per epoch, the schedule,
  objective, mirror, the network) are compared with the checkpoint's, a different run is refused naming the
  keys that differ unless ``resume_force`` is set, then ignite's ``Checkpoint.load_objects`` loads the entries.

``ignite.distributed`` runs the same code in one process or under ``torchrun --nproc_per_node=N`` (gloo on CPU,
nccl on GPU). The options are typed (``int``, ``float``, ``bool``) and checked (:func:`mfassl.options.require`):
text from a command line is parsed where it comes in (the bundles' JSON calls :func:`mfassl.options.as_int` and
friends on their keys), and a string that reaches the trainer is refused naming the option.

MONAI's handlers (``StatsHandler``, ``MLFlowHandler``, what ``python -m monai.bundle run --tracking mlflow``
adds) read a trainer as MONAI's own engines are built: ``decollate=True`` makes ``trainer.state.output`` a list
of one record (``[{"loss": ..., ...}]``, so ``from_engine(["loss"], first=True)`` is the loss),
``trainer.optimizer`` is the optimizer (the lr they log), an ``inferer`` runs the forward as
``inferer(images, network, axes, epoch=...)``, and :class:`EpochMetrics` puts each output's epoch mean into
``trainer.state.metrics`` (what they log per epoch). :func:`step_record` reads the output either way.

``compile=True`` runs the step's forward (the whole :class:`~mfassl.method.MFASSL` loss computation: views,
objective, mirror branch, symmetry losses) through ``torch.compile`` (:func:`compile_forward`; ``compile_mode``
and ``compile_backend`` are passed on); the backward, gradient clipping, the optimizer step and the teacher's
EMA stay eager and act on the real parameters, and checkpoints hold the uncompiled module's state dict (the
same keys with or without compile, so a run may resume with compile switched on or off).

Example::

    method = MFASSL(create_backbone("mfa_vit_small", in_chans=1), "dino")
    optimizer = create_optimizer(method)
    trainer = create_trainer(method, optimizer, steps_per_epoch=len(loader), max_epochs=100,
                             batch_size=64, output_dir="runs/cxr")
    weight_decay_schedule(optimizer, 0.04, 0.4, total_steps=len(loader) * 100).attach(trainer)  # optional
    trainer.run(loader, max_epochs=100)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.engine.deterministic import DeterministicEngine

from mfassl.checkpoints import CHECKPOINT_PREFIX, CheckpointSaver, find_last_checkpoint, load_checkpoint
from mfassl.handlers import (
    EpochMetrics,
    ProgressHandler,
    StopOnNonFinite,
    TeacherEMA,
    TensorBoardHandler,
    TrainEvents,
    set_sampler_epoch,
    step_record,
)
from mfassl.options import as_bool, as_float, require
from mfassl.resume import ResumeError, RunSettings, TrainerState, resolve_resume, resume, run_settings, unwrap
from mfassl.schedule_handlers import lr_schedule, teacher_momentum_schedule
from mfassl.schedules import scaled_lr

__all__ = [
    "COMPILE_MODES",
    "FUSED_DEVICES",
    "compile_forward",
    "create_optimizer",
    "create_trainer",
    "default_prepare_batch",
    "find_last_checkpoint",
    "load_checkpoint",
    "run_settings",
    "CHECKPOINT_PREFIX",
    "CheckpointSaver",
    "EpochMetrics",
    "ProgressHandler",
    "ResumeError",
    "TensorBoardHandler",
    "TrainStep",
    "step_record",
]

logger = logging.getLogger(__name__)

FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose parameters get torch's fused AdamW kernel by default (:func:`create_optimizer`)."""


def create_optimizer(model: nn.Module, lr: float = 5e-4, weight_decay: float = 0.04,
                     betas: tuple[float, float] = (0.9, 0.999), fused: bool | str | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms and scalars get no weight decay.

    Args:
        model: the module whose trainable parameters are optimised (an ``MFASSL``, a segmentation net).
        lr, weight_decay, betas: AdamW's (``lr`` is the starting value: ``create_trainer`` sets it each step).
        fused: use torch's fused AdamW kernel (one kernel over all parameters instead of a dozen per-tensor ops
            each; the same update to float32 rounding). ``None`` (default): fused when every parameter is a
            floating-point tensor on a device of :data:`FUSED_DEVICES`, else torch's default implementation.
            ``True`` insists (an error names a parameter that cannot take it), ``False`` declines. Bundles pass
            strings: ``--optimizer#fused false``.

    The choice is recorded in the param groups (``group["fused"]``); when :func:`create_trainer` resumes, the
    optimizer keeps its own choice whichever kernel wrote the checkpoint.
    """
    lr, weight_decay = as_float(lr, "lr", low=0.0), as_float(weight_decay, "weight_decay", low=0.0)
    fused = as_bool(fused, "fused", allow_none=True)
    decay, no_decay, unfusable = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
        if not (p.is_floating_point() and p.device.type in FUSED_DEVICES):
            unfusable.append(f"'{name}' ({p.dtype} on {p.device})")
    if fused is None:
        fused = not unfusable
    elif fused and unfusable:
        raise ValueError(f"create_optimizer(fused=True): parameter {unfusable[0]} cannot take the fused AdamW kernel "
                         f"(floating point on {'/'.join(FUSED_DEVICES)}); use fused=None or False.")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused or None)


def default_prepare_batch(batch: Any, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, axes)`` from a batch: a tensor, an ``(images[, axes])`` sequence, or a dict with
    ``image`` and optionally ``axis`` or ``image_axis`` (``(B, D+1)`` rows ``[n, d]`` in index coordinates,
    the key ``mfassl_medical``'s ``EstimateSymmetryAxisd`` writes)."""
    if isinstance(batch, torch.Tensor):
        images, axes = batch, None
    elif isinstance(batch, dict):
        images = batch["image"]
        axes = batch.get("axis", batch.get("image_axis"))
    elif isinstance(batch, (list, tuple)):
        images = batch[0]
        axes = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) and batch[1].ndim == 2 else None
    else:
        raise TypeError(f"cannot read images from a batch of type {type(batch).__name__}.")
    images = torch.as_tensor(images).to(device, non_blocking=True).float()
    if axes is not None:
        axes = torch.as_tensor(axes).to(device, non_blocking=True).float()
    return images, axes


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes :func:`compile_forward` accepts (the inductor backend's)."""


def _compile_mode(mode: Any) -> str:
    """``mode`` checked against :data:`COMPILE_MODES` (``None`` = ``"default"``)."""
    text = "default" if mode is None else str(mode).strip()
    if text not in COMPILE_MODES:
        raise ValueError(f"option 'compile_mode': {mode!r} is not a torch.compile mode; use one of "
                         f"{', '.join(COMPILE_MODES)}.")
    return text


def _compile_backends() -> list[str]:
    import torch._dynamo

    return sorted(torch._dynamo.list_backends(exclude_tags=()))


def compile_forward(model: nn.Module, mode: str | None = "default",
                    backend: str | Callable[..., Any] = "inductor") -> nn.Module:
    """``torch.compile(model, mode=..., backend=...)`` after checking the options.

    The returned module shares its parameters and buffers with ``model``; train and save ``model`` itself
    (its state dict has no ``_orig_mod.`` prefix), call the returned one for the forward.

    Args:
        model: the module whose ``forward`` is compiled (an :class:`~mfassl.method.MFASSL`, or its DDP wrapper).
        mode: one of :data:`COMPILE_MODES` (``None`` = ``"default"``); modes other than ``"default"`` are the
            inductor backend's (``"reduce-overhead"`` adds CUDA graphs, ``"max-autotune"`` searches kernels).
        backend: a ``torch._dynamo`` backend name (``"inductor"``; ``"aot_eager"`` and ``"eager"`` trace
            without generating code, for debugging and tests) or a backend callable.

    Raises:
        ValueError: an unknown mode or backend name (naming ``compile_mode`` / ``compile_backend``), or a
            mode other than ``"default"`` with a backend other than inductor.
    """
    mode = _compile_mode(mode)
    if isinstance(backend, str):
        backend = backend.strip()
        known = _compile_backends()
        if backend not in known:
            raise ValueError(f"option 'compile_backend': {backend!r} is not a torch.compile backend; use one of "
                             f"{', '.join(known)}.")
        if backend != "inductor" and mode != "default":
            raise ValueError(f"option 'compile_mode': {mode!r} is a mode of the inductor backend; with "
                             f"compile_backend {backend!r} use 'default'.")
    elif not callable(backend):
        raise ValueError(f"option 'compile_backend': {backend!r} is neither a backend name nor a callable.")
    return torch.compile(model, mode=mode, backend=backend)


class TrainStep:
    """The trainer's process function: one update of the method, and nothing around it.

    ``step(engine, batch)``: ``prepare_batch`` gives ``(images, axes)``; the forward runs (through ``inferer``
    when given; under autocast with AMP) at the fractional epoch ``(iteration - 1) / steps_per_epoch``; its
    outputs go to ``engine.state.forward_output`` and :attr:`TrainEvents.FORWARD_COMPLETED` fires (where
    :class:`~mfassl.handlers.StopOnNonFinite` checks the loss); then the backward (scaled with AMP), gradient
    clipping, the optimizer step and :attr:`TrainEvents.OPTIMIZER_STEP_COMPLETED` (the teacher's EMA).

    Returns the record: each forward output as a float, then the values the schedules set for this step
    (``engine.state.scheduled``: ``lr``, ``momentum``, whatever another schedule publishes) and ``epoch_float``;
    ``[record]`` with ``decollate`` (MONAI's engines' form).

    Args:
        model: the module trained (wrapped for DDP when several processes run); set to train mode each step.
        forward: what the step calls, ``forward(images, axes, epoch=...)`` (``model``, or its compiled forward).
        optimizer: the optimizer.
        prepare_batch: ``(batch, device) -> (images (B, C, *S), axes (B, D+1) or None)``.
        device: where the batch goes.
        steps_per_epoch: iterations per epoch (the fractional epoch drives the method's symmetry schedule).
        scaler: AMP's ``GradScaler`` (disabled without AMP).
        clip_grad: max gradient norm (None: no clipping).
        inferer: runs the forward as ``inferer(images, forward, axes, epoch=epoch)`` (MONAI's form), or None.
        decollate: return ``[record]`` instead of the record.
    """

    def __init__(self, model: nn.Module, forward: Callable[..., dict[str, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, *, prepare_batch: Callable[[Any, Any], tuple[torch.Tensor, Any]],
                 device: torch.device, steps_per_epoch: int, scaler: torch.amp.GradScaler,
                 clip_grad: float | None = None, inferer: Callable[..., Any] | None = None,
                 decollate: bool = False) -> None:
        self.model, self.forward, self.optimizer = model, forward, optimizer
        self.prepare_batch, self.device, self.steps_per_epoch = prepare_batch, device, steps_per_epoch
        self.scaler, self.clip_grad, self.inferer, self.decollate = scaler, clip_grad, inferer, decollate
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def __call__(self, engine: Engine, batch: Any) -> dict[str, float] | list[dict[str, float]]:
        epoch = (engine.state.iteration - 1) / max(self.steps_per_epoch, 1)
        self.model.train()
        images, axes = self.prepare_batch(batch, self.device)
        with torch.autocast(device_type=self.device.type, enabled=self.scaler.is_enabled()):
            out = (self.forward(images, axes, epoch=epoch) if self.inferer is None
                   else self.inferer(images, self.forward, axes, epoch=epoch))
        engine.state.forward_output = out
        engine.fire_event(TrainEvents.FORWARD_COMPLETED)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        engine.fire_event(TrainEvents.OPTIMIZER_STEP_COMPLETED)
        engine.state.forward_output = None
        record = {k: float(v.detach()) for k, v in out.items()}
        record.update(getattr(engine.state, "scheduled", None) or {})
        record["epoch_float"] = epoch
        return [record] if self.decollate else record


# create_trainer's typed options: (kind, low, high, None allowed); checked by mfassl.options.require
_OPTIONS: dict[str, tuple[type, float | None, float | None, bool]] = {
    "steps_per_epoch": (int, 0, None, False), "max_epochs": (int, 1, None, False),
    "batch_size": (int, 1, None, False), "checkpoint_every": (int, 1, None, False), "n_saved": (int, 1, None, False),
    "base_lr": (float, 0.0, None, False), "min_lr": (float, 0.0, None, False),
    "warmup_epochs": (float, 0.0, None, False), "clip_grad": (float, 0.0, None, True),
    "momentum_start": (float, 0.0, 1.0, True), "momentum_end": (float, 0.0, 1.0, False),
    **{k: (bool, None, None, False) for k in ("amp", "tensorboard", "progress", "deterministic", "resume_force",
                                              "compile", "decollate")},
}


def _check_options(values: Mapping[str, Any]) -> None:
    """Each of :data:`_OPTIONS` in ``values`` checked for its type and range (a string is refused, naming the
    parser a command line or bundle applies)."""
    for key, (kind, low, high, allow_none) in _OPTIONS.items():
        require(values[key], key, kind, low=low, high=high, allow_none=allow_none)


def _step_forward(method: nn.Module, model: nn.Module, compile: bool, mode: str | None,
                  backend: str | Callable[..., Any]) -> tuple[Callable[..., Any], dict[str, Any] | None]:
    """The step's forward and the compile settings (None without ``compile``): ``model``, the caller's own
    ``torch.compile(method)`` in one process, or ``compile_forward(model)``."""
    mode = _compile_mode(mode)  # checked even when compile is off (a typo is not ignored)
    if not compile:
        uses_callers = isinstance(getattr(method, "_orig_mod", None), nn.Module) and model is unwrap(method)
        return (method if uses_callers else model), None
    settings = {"mode": mode, "backend": backend.strip() if isinstance(backend, str)
                else getattr(backend, "__name__", repr(backend))}
    logger.info("the step's forward runs through torch.compile (mode %s, backend %s); the first steps compile.",
                settings["mode"], settings["backend"])
    return compile_forward(model, mode, backend), settings


def _within_schedule(max_epochs: int) -> Callable[[Engine], None]:
    def check(engine: Engine) -> None:
        if engine.state.max_epochs is not None and engine.state.max_epochs > max_epochs:
            raise ValueError(f"trainer.run(max_epochs={engine.state.max_epochs}) goes past the {max_epochs} epochs the "
                             "lr and momentum schedules plan (create_trainer max_epochs; a bundle's schedule_epochs): "
                             f"set it to at least {engine.state.max_epochs}.")

    return check


def create_trainer(method: nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int, *,
                   base_lr: float = 5e-4, batch_size: int = 256, warmup_epochs: float = 10.0, min_lr: float = 1e-6,
                   momentum_start: float | None = None, momentum_end: float = 1.0, clip_grad: float | None = 3.0,
                   amp: bool = False, device: str | torch.device | None = None, output_dir: str | os.PathLike | None = None,
                   checkpoint_every: int = 1, n_saved: int = 2, tensorboard: bool = True, progress: bool = True,
                   prepare_batch: Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor | None]] = default_prepare_batch,
                   resume_from: str | os.PathLike | None = None, deterministic: bool = True,
                   handlers: Sequence[Any] | None = None, resume_force: bool = False,
                   run_config: Mapping[str, Any] | None = None, compile: bool = False,
                   compile_mode: str | None = "default",
                   compile_backend: str | Callable[..., Any] = "inductor",
                   inferer: Callable[..., Any] | None = None, decollate: bool = False) -> Engine:
    """Build the ignite trainer of an :class:`~mfassl.method.MFASSL` run.

    Every option is typed (``int``, ``float``, ``bool`` as annotated; an ``int`` serves as a ``float``) and
    checked: a string (a command-line value nobody parsed) or a value out of range raises ``ValueError`` naming
    the option. Parse text where it comes in (:func:`mfassl.options.as_bool` and friends; the bundles do).

    Args:
        method: the MFASSL module (wrapped for DDP here when several processes run). A module the caller
            compiled (``torch.compile(method)``) is trained and saved through its uncompiled module; in one
            process its compiled forward is the step's forward.
        optimizer: from :func:`create_optimizer`.
        steps_per_epoch: iterations per epoch (fractional epochs drive the schedules).
        max_epochs: planned epochs (sets the cosine schedules); ``trainer.run`` may not go past them.
        base_lr: peak lr at batch 256 (5e-4); the peak is ``base_lr * batch_size / 256``.
        batch_size: the global batch size (all processes).
        warmup_epochs: linear lr warm-up.
        min_lr: final lr of the cosine.
        momentum_start: teacher momentum at step 0 (default: the objective's, 0.996 for DINO).
        momentum_end: teacher momentum at the last step (1.0).
        clip_grad: max gradient norm, None to disable.
        amp: mixed precision (used on CUDA only).
        device: default ``idist.device()``.
        output_dir: where the default handlers write checkpoints (``checkpoints/``) and TensorBoard logs
            (``tb/``), and where ``resume_from="auto"`` looks; None disables both defaults.
        checkpoint_every: epochs between checkpoints of the default saver (the last epoch is always saved).
        n_saved: full checkpoints the default saver keeps (existing ones count).
        tensorboard: attach the default TensorBoard handler (rank 0).
        progress: attach the default progress bar (rank 0).
        prepare_batch: ``(batch, device) -> (images, axes or None)``.
        resume_from: a checkpoint file, a directory (its latest checkpoint), or ``"auto"`` (the latest in the
            checkpoint folder of a :class:`~mfassl.checkpoints.CheckpointSaver` or ``output_dir/checkpoints``;
            a new run when there is none).
        deterministic: use ignite's ``DeterministicEngine`` (reproducible data order on resume).
        handlers: objects with ``attach(engine)`` to attach instead of the defaults (a bundle's
            ``train#handlers``: :class:`ProgressHandler`, :class:`TensorBoardHandler`,
            :class:`~mfassl.checkpoints.CheckpointSaver` (attached as ``attach(trainer, to_save)``), the run
            history, a schedule of :mod:`mfassl.schedule_handlers`, or MONAI/ignite handlers).
        resume_force: resume even when the run-defining settings differ from the checkpoint's (a network
            whose keys or shapes differ is always refused).
        run_config: extra run-defining settings to record and compare (JSON-able values).
        compile: run the step's forward (``method(images, axes, epoch)``, the whole loss computation)
            through ``torch.compile`` (:func:`compile_forward`). The first two steps compile (the second once
            the epoch leaves 0), and the step recompiles once when MFA switches on at ``t_mfa``; backward,
            clipping, optimizer and teacher updates stay eager, and the checkpoints hold the uncompiled state
            dict. Not a run-defining setting (resumes either way).
        compile_mode: the ``torch.compile`` mode, one of :data:`COMPILE_MODES` (``"default"``; checked even
            when ``compile`` is off).
        compile_backend: the ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` / ``"eager"`` to debug;
            its name is checked when ``compile`` is on).
        inferer: a MONAI ``Inferer`` (or any ``inferer(inputs, network, *args, **kwargs)``) that runs the step's
            forward as ``inferer(images, method, axes, epoch=epoch)``; None calls the method directly (the same
            as MONAI's ``SimpleInferer``).
        decollate: True: ``trainer.state.output`` is ``[record]``, a list of one dict, the form of MONAI's
            engines (whose decollated outputs repeat the batch's scalars in every item), so MONAI's handlers and
            ``from_engine([...], first=True)`` read it; False: the dict itself.

    Returns:
        The trainer; ``trainer.state.output`` is the step's dict of floats (``[dict]`` with ``decollate``;
        :func:`step_record` gives the dict either way) and ``trainer.optimizer`` the optimizer.
        ``trainer.run(loader, max_epochs)``. ``trainer.checkpoint_objects`` is the ``to_save`` mapping the
        checkpoints hold (for an ignite ``Checkpoint`` of one's own), ``trainer.run_settings`` the settings a
        resume compares, ``trainer.compile_settings`` ``{"mode": ..., "backend": ...}`` with ``compile``, else None.

    Raises:
        ResumeError: the checkpoint holds another network, or other settings without ``resume_force``.
        ValueError: an option of the wrong type or out of range, a bad ``compile_mode`` or ``compile_backend``
            (naming the option).
    """
    _check_options(locals())
    device = torch.device(device) if device is not None else idist.device()
    core = unwrap(method).to(device)
    model = idist.auto_model(core, find_unused_parameters=True) if idist.get_world_size() > 1 else core
    forward, compile_settings = _step_forward(method, model, compile, compile_mode, compile_backend)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    step = TrainStep(model, forward, optimizer, prepare_batch=prepare_batch, device=device,
                     steps_per_epoch=steps_per_epoch, scaler=scaler, clip_grad=clip_grad, inferer=inferer,
                     decollate=decollate)
    trainer: Engine = DeterministicEngine(step) if deterministic else Engine(step)
    trainer.register_events(*TrainEvents)
    trainer.logger = logging.getLogger("mfassl.trainer")
    trainer.optimizer = optimizer  # where MONAI's handlers (StatsHandler, MLFlowHandler) read the lr

    total_steps = max(1, steps_per_epoch * max_epochs)
    own: list[Any] = [lr_schedule(optimizer, peak_lr=scaled_lr(base_lr, batch_size), min_lr=min_lr,
                                  warmup_steps=warmup_epochs * steps_per_epoch, total_steps=total_steps),
                      StopOnNonFinite()]
    m_start = momentum_start if momentum_start is not None else getattr(core, "teacher_momentum", None)
    if m_start is not None:
        own += [teacher_momentum_schedule(m_start, momentum_end, total_steps), TeacherEMA(core)]
    for part in own:
        part.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_STARTED, set_sampler_epoch)
    trainer.add_event_handler(Events.STARTED, _within_schedule(max_epochs))
    if idist.get_world_size() > 1:
        # every rank finishes its last collective before any of them goes on to tear the group down
        trainer.add_event_handler(Events.COMPLETED, lambda _: idist.barrier())

    settings = run_settings(core, batch_size=batch_size, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs,
                            warmup_epochs=warmup_epochs, base_lr=base_lr, min_lr=min_lr, extra=run_config)
    to_save: dict[str, Any] = {"model": core, "optimizer": optimizer, "trainer": TrainerState(trainer),
                               "run": RunSettings(settings)}
    if scaler.is_enabled():
        to_save["scaler"] = scaler
    trainer.checkpoint_objects, trainer.run_settings, trainer.compile_settings = to_save, settings, compile_settings

    if handlers is None:
        handlers = [ProgressHandler()] if progress else []
        if output_dir is not None:
            handlers.append(CheckpointSaver(Path(output_dir) / "checkpoints", n_saved=n_saved, every=checkpoint_every))
            handlers += [TensorBoardHandler(Path(output_dir) / "tb")] if tensorboard else []
    handlers = list(handlers)
    for i, h in enumerate(handlers):
        if not callable(getattr(h, "attach", None)):
            raise TypeError(f"handlers[{i}] ({type(h).__name__}) has no attach(engine) method.")
    savers = [h for h in handlers if isinstance(h, CheckpointSaver)]
    dirs = [h.save_dir for h in savers] + ([Path(output_dir) / "checkpoints"] if output_dir is not None else [])
    path = resolve_resume(resume_from, dirs)
    if path is not None:
        resume(trainer, path, to_save, settings, device=device, force=resume_force)
    for h in handlers:
        if isinstance(h, CheckpointSaver):
            h.attach(trainer, to_save)  # the entries it writes, handed over explicitly
        else:
            h.attach(trainer)
    return trainer
