"""The training engine every entry point uses (bundles, the face CLI, benchmarks).

:func:`create_trainer` returns an ignite ``Engine`` whose step runs one :class:`~mfassl.method.MFASSL`
update: lr = warm-up + cosine (peak ``base_lr * batch / 256``), teacher momentum on a cosine to 1,
gradient clipping, optional AMP on GPU. Handlers: a progress bar, TensorBoard scalars (each loss, the
gate mean, ``r_t``, ``w(t)``, lr, momentum), and an ignite ``Checkpoint`` written atomically
(temporary file + rename, so a crash never corrupts the last good checkpoint) holding the model,
optimizer, AMP scaler and trainer state (epoch, iteration and RNG states: ignite's
``DeterministicEngine`` makes a resumed run draw the same data and augmentations as an
uninterrupted one). ``ignite.distributed`` runs the same code in one process or under
``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU).

Example::

    method = MFASSL(create_backbone("mfa_vit_small", in_chans=1), "dino")
    optimizer = create_optimizer(method)
    trainer = create_trainer(method, optimizer, steps_per_epoch=len(loader), max_epochs=100,
                             batch_size=64, output_dir="runs/cxr")
    trainer.run(loader, max_epochs=100)
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.engine.deterministic import DeterministicEngine
from ignite.handlers import Checkpoint, DiskSaver, ProgressBar

from mfassl.schedules import cosine_momentum, scaled_lr, warmup_cosine

__all__ = [
    "create_optimizer",
    "create_trainer",
    "default_prepare_batch",
    "find_last_checkpoint",
    "load_checkpoint",
    "CHECKPOINT_PREFIX",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"


def create_optimizer(model: nn.Module, lr: float = 5e-4, weight_decay: float = 0.04,
                     betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms and scalars get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


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


_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)\.pt$")


def find_last_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest iteration in ``directory`` (None if there is none)."""
    d = Path(directory)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a clear error names a missing or corrupt file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise RuntimeError(f"checkpoint {p} cannot be read ({type(err).__name__}: {err}); "
                           "it may be truncated or not a checkpoint.") from err


def _rng_to_tensors(states: list[Any]) -> dict[str, torch.Tensor]:
    """ignite's ``[python, torch, numpy]`` RNG states as tensors (loadable with ``weights_only=True``)."""
    (version, internal, gauss_next), torch_state = states[0], states[1]
    out = {
        "torch": torch_state,
        "python_internal": torch.tensor(internal, dtype=torch.int64),
        "python_meta": torch.tensor([version, 0 if gauss_next is None else 1], dtype=torch.int64),
        "python_gauss": torch.tensor(0.0 if gauss_next is None else gauss_next, dtype=torch.float64),
    }
    if len(states) > 2:
        _, keys, pos, has_gauss, cached = states[2]
        out["numpy_keys"] = torch.as_tensor(np.asarray(keys, dtype=np.int64))
        out["numpy_meta"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
        out["numpy_cached"] = torch.tensor(cached, dtype=torch.float64)
    return out


def _rng_from_tensors(sd: dict[str, torch.Tensor]) -> list[Any]:
    """Inverse of :func:`_rng_to_tensors`."""
    version, has_next = (int(v) for v in sd["python_meta"])
    python = (version, tuple(int(v) for v in sd["python_internal"]), float(sd["python_gauss"]) if has_next else None)
    states: list[Any] = [python, sd["torch"].cpu().to(torch.uint8)]
    if "numpy_keys" in sd:
        pos, has_gauss = (int(v) for v in sd["numpy_meta"])
        states.append(("MT19937", sd["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, float(sd["numpy_cached"])))
    return states


class _TrainerState:
    """The trainer's state dict with its RNG states stored as tensors (for ``weights_only`` loading)."""

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        sd = dict(self.trainer.state_dict())
        rng = sd.pop("rng_states", None)
        if rng is not None:
            sd["rng_tensors"] = _rng_to_tensors(rng)
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        sd = dict(sd)
        rng = sd.pop("rng_tensors", None)
        if rng is not None:
            sd["rng_states"] = _rng_from_tensors(rng)
        self.trainer.load_state_dict(sd)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def create_trainer(method: nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int, *,
                   base_lr: float = 5e-4, batch_size: int = 256, warmup_epochs: float = 10.0, min_lr: float = 1e-6,
                   momentum_start: float | None = None, momentum_end: float = 1.0, clip_grad: float | None = 3.0,
                   amp: bool = False, device: str | torch.device | None = None, output_dir: str | os.PathLike | None = None,
                   checkpoint_every: int = 1, n_saved: int = 2, tensorboard: bool = True, progress: bool = True,
                   prepare_batch: Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor | None]] = default_prepare_batch,
                   resume_from: str | os.PathLike | None = None, deterministic: bool = True) -> Engine:
    """Build the ignite trainer of an :class:`~mfassl.method.MFASSL` run.

    Args:
        method: the MFASSL module (wrapped for DDP here when several processes run).
        optimizer: from :func:`create_optimizer`.
        steps_per_epoch: iterations per epoch (fractional epochs drive the schedules).
        max_epochs: planned epochs (sets the cosine schedules).
        base_lr: peak lr at batch 256 (5e-4); the peak is ``base_lr * batch_size / 256``.
        batch_size: the global batch size (all processes).
        warmup_epochs: linear lr warm-up.
        min_lr: final lr of the cosine.
        momentum_start: teacher momentum at step 0 (default: the objective's, 0.996 for DINO).
        momentum_end: teacher momentum at the last step (1.0).
        clip_grad: max gradient norm, None to disable.
        amp: mixed precision (used on CUDA only).
        device: default ``idist.device()``.
        output_dir: checkpoints (``checkpoints/``) and TensorBoard logs (``tb/``); None disables both.
        checkpoint_every: epochs between checkpoints (the last epoch is always saved).
        n_saved: checkpoints kept.
        tensorboard: write TensorBoard scalars (rank 0).
        progress: show a progress bar (rank 0).
        prepare_batch: ``(batch, device) -> (images, axes or None)``.
        resume_from: a checkpoint file, a directory (its latest checkpoint), or ``"auto"`` (the latest in
            ``output_dir/checkpoints`` if any).
        deterministic: use ignite's ``DeterministicEngine`` (reproducible data order on resume).

    Returns:
        The trainer; ``trainer.state.output`` is the step's dict of floats. ``trainer.run(loader, max_epochs)``.
    """
    device = torch.device(device) if device is not None else idist.device()
    core = _unwrap(method).to(device)
    model = idist.auto_model(core, find_unused_parameters=True) if idist.get_world_size() > 1 else core
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    total_steps = max(1, steps_per_epoch * max_epochs)
    warmup_steps = warmup_epochs * steps_per_epoch
    peak_lr = scaled_lr(base_lr, batch_size)
    m_start = momentum_start if momentum_start is not None else getattr(core, "teacher_momentum", None)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def train_step(engine: Engine, batch: Any) -> dict[str, float]:
        step = engine.state.iteration - 1
        epoch = step / max(steps_per_epoch, 1)
        lr = warmup_cosine(step, total_steps, warmup_steps, peak_lr, min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        images, axes = prepare_batch(batch, device)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(images, axes, epoch=epoch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {engine.state.iteration}; stopping before "
                                     "the weights are corrupted (the last checkpoint is intact).")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
        result = {k: float(v.detach()) for k, v in out.items()}
        result["lr"] = lr
        if m_start is not None:
            m = cosine_momentum(step, total_steps, m_start, momentum_end)
            core.update_teacher(m)
            result["momentum"] = m
        result["epoch_float"] = epoch
        return result

    trainer: Engine = DeterministicEngine(train_step) if deterministic else Engine(train_step)
    trainer.logger = logging.getLogger("mfassl.trainer")
    rank0 = idist.get_rank() == 0
    if idist.get_world_size() > 1:
        # every rank finishes its last collective before any of them goes on to tear the group down
        trainer.add_event_handler(Events.COMPLETED, lambda _: idist.barrier())

    if progress and rank0:
        ProgressBar(persist=False, bar_format=None).attach(
            trainer, output_transform=lambda out: {k: out[k] for k in ("loss", "gate_mean") if k in out})

    to_save: dict[str, Any] = {"model": core, "optimizer": optimizer, "trainer": _TrainerState(trainer)}
    if use_amp:
        to_save["scaler"] = scaler
    if output_dir is not None:
        out_dir = Path(output_dir)
        ckpt_dir = out_dir / "checkpoints"
        saver = DiskSaver(str(ckpt_dir), atomic=True, require_empty=False, create_dir=True)
        checkpoint = Checkpoint(to_save, saver, filename_prefix="", n_saved=n_saved,
                                global_step_transform=lambda e, _: e.state.iteration, include_self=False)
        trainer.add_event_handler(Events.EPOCH_COMPLETED(every=checkpoint_every) | Events.COMPLETED, _SaveOnce(checkpoint))
        trainer.state.checkpoint_dir = str(ckpt_dir)
        if tensorboard and rank0:
            _attach_tensorboard(trainer, out_dir / "tb")
        if resume_from == "auto":
            resume_from = find_last_checkpoint(ckpt_dir)
    if resume_from not in (None, "auto"):
        path = Path(resume_from)
        if path.is_dir():
            found = find_last_checkpoint(path)
            if found is None:
                raise FileNotFoundError(f"no checkpoint_<iteration>.pt in {path} to resume from.")
            path = found
        state = load_checkpoint(path, map_location=device)
        Checkpoint.load_objects(to_load=to_save, checkpoint=state)
        logger.info("resumed from %s at epoch %d, iteration %d", path, trainer.state.epoch, trainer.state.iteration)
        trainer.state.resumed_from = str(path)
    return trainer


class _SaveOnce:
    """Calls a ``Checkpoint`` at most once per iteration (EPOCH_COMPLETED and COMPLETED can coincide)."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.last = -1

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration != self.last:
            self.last = engine.state.iteration
            self.checkpoint(engine)


def _attach_tensorboard(trainer: Engine, log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))

    def write(engine: Engine) -> None:
        out = engine.state.output or {}
        for k, v in out.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(f"train/{k}", v, engine.state.iteration)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, write)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: writer.flush())
    trainer.add_event_handler(Events.COMPLETED, lambda _: writer.close())
    trainer.state.tensorboard_dir = str(log_dir)
