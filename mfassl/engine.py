"""The training engine every entry point uses (bundles, the face CLI, benchmarks).

:func:`create_trainer` returns an ignite ``Engine`` whose step runs one :class:`~mfassl.method.MFASSL`
update: lr = warm-up + cosine (peak ``base_lr * batch / 256``), teacher momentum on a cosine to 1,
gradient clipping, optional AMP on GPU. Handlers, each an object with ``attach(engine)`` (the bundles list
them in JSON; without a list the defaults below are attached): :class:`ProgressHandler` (a progress bar),
:class:`TensorBoardHandler` (each loss, the gate mean, ``r_t``, ``w(t)``, lr, momentum) and
:class:`~mfassl.checkpoints.CheckpointSaver` (full checkpoints written atomically, the newest ``n_saved``
kept) holding the model, optimizer, AMP scaler, trainer state (epoch, iteration and RNG states: ignite's
``DeterministicEngine`` makes a resumed run draw the same data and augmentations as an uninterrupted one)
and the run settings. A resume compares the run-defining settings (batch size, steps per epoch, the
schedule, objective, mirror, the network) with the checkpoint's and refuses a different run unless
``resume_force`` is set. ``ignite.distributed`` runs the same code in one process or under
``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU).

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
    trainer.run(loader, max_epochs=100)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.engine.deterministic import DeterministicEngine
from ignite.handlers import ProgressBar

from mfassl.checkpoints import CHECKPOINT_PREFIX, CheckpointSaver, find_last_checkpoint, load_checkpoint
from mfassl.encoder_files import EncoderLoadError, describe_encoder
from mfassl.options import as_bool, as_float, as_int
from mfassl.schedules import cosine_momentum, scaled_lr, warmup_cosine

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


_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` that keeps the optimizer's own kernel choice (``fused``, ``foreach``,
    ``capturable``): the checkpoint gives the state and hyper-parameters, the code that built the optimizer decides
    how the update runs (a checkpoint written before AdamW was fused resumes on the fused kernel, and back).
    Each ``step`` counter is put where that kernel wants it (fused / capturable: a float32 on the parameter's
    device; else a CPU scalar)."""
    chosen = [{k: g[k] for k in _IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, chosen):
        group.update(keep)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                optimizer.state[p]["step"] = (step.to(dtype=torch.float32, device=p.device) if on_device
                                              else step.to(dtype=torch.float32, device="cpu"))


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
    """The module that owns the parameters: through DDP's ``.module`` and ``torch.compile``'s ``._orig_mod``."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


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


class ResumeError(ValueError):
    """A checkpoint cannot continue this run: another network, or run-defining settings that differ."""


class _Settings:
    """The run settings as a checkpoint entry (``state_dict`` only; a resume compares them, never loads them)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:  # pragma: no cover - never restored
        pass


def _model_hash(state: Mapping[str, Any]) -> str:
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items() if isinstance(v, torch.Tensor))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def run_settings(method: nn.Module, *, batch_size: int, steps_per_epoch: int, max_epochs: int,
                 warmup_epochs: float, base_lr: float, min_lr: float,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run-defining settings a checkpoint records and a resume must match.

    ``batch_size``, ``steps_per_epoch``, ``max_epochs`` (the planned schedule), ``warmup_epochs``, ``base_lr``,
    ``min_lr``; from the method: ``objective``, ``mirror``, ``beta``, ``lambda_eq``, ``lambda_mid``, ``t_sym``,
    ``t_mfa``, ``t_gate``; ``network`` (the encoder's :func:`~mfassl.encoder_files.describe_encoder` as JSON) and
    ``model_hash`` (keys and shapes of the whole method); then ``extra`` (caller-defined keys).
    """
    core = _unwrap(method)
    s: dict[str, Any] = {"batch_size": int(batch_size), "steps_per_epoch": int(steps_per_epoch),
                         "max_epochs": int(max_epochs), "warmup_epochs": float(warmup_epochs),
                         "base_lr": float(base_lr), "min_lr": float(min_lr)}
    objective = getattr(core, "objective", None)
    if isinstance(objective, nn.Module):
        s["objective"] = str(getattr(objective, "name", type(objective).__name__))
    if hasattr(core, "mirror"):
        s["mirror"] = bool(core.mirror)
    for key in ("beta", "lambda_eq", "lambda_mid"):
        if isinstance(getattr(core, key, None), (int, float)):
            s[key] = float(getattr(core, key))
    schedule = getattr(core, "schedule", None)
    for key in ("t_sym", "t_mfa", "t_gate"):
        if isinstance(getattr(schedule, key, None), (int, float)):
            s[key] = float(getattr(schedule, key))
    backbone = getattr(core, "backbone", None)
    if isinstance(backbone, nn.Module):
        try:
            s["network"] = json.dumps(describe_encoder(backbone), sort_keys=True)
        except EncoderLoadError:
            pass
    s["model_hash"] = _model_hash(core.state_dict())
    for k, v in (extra or {}).items():
        s[str(k)] = v if isinstance(v, (bool, int, float, str)) or v is None else json.dumps(v, sort_keys=True,
                                                                                             default=str)
    return s


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _setting_diffs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint value, current value)`` for each run-defining setting that differs."""
    diffs: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        if key == "model_hash":
            continue
        a, b = old.get(key), new.get(key)
        if key == "network" and isinstance(a, str) and isinstance(b, str) and a != b:
            try:
                da, db = json.loads(a), json.loads(b)
                ca, cb = {"backbone": da.get("backbone"), **da.get("config", {})}, \
                    {"backbone": db.get("backbone"), **db.get("config", {})}
                diffs += [(f"network.{k}", ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb))
                          if not _same(ca.get(k), cb.get(k))]
                continue
            except (ValueError, AttributeError):
                pass
        if not _same(a, b):
            diffs.append((key, a, b))
    return diffs


def _check_resume(path: Path, ckpt: Mapping[str, Any], settings: Mapping[str, Any], core: nn.Module,
                  force: bool) -> None:
    """Refuse a checkpoint of another network, or (unless ``force``) of a run with other settings."""
    model_state = ckpt.get("model")
    if not isinstance(model_state, Mapping):
        raise ResumeError(f"cannot resume from {path}: it holds no 'model' entry (keys {sorted(ckpt)[:6]}); "
                          "is it a training checkpoint of mfassl.engine?")
    old = ckpt.get("run")
    diffs = _setting_diffs(old, settings) if isinstance(old, Mapping) else []
    cur = core.state_dict()
    missing = [k for k in cur if k not in model_state]
    unexpected = [k for k in model_state if k not in cur]
    shapes = [f"{k} {tuple(model_state[k].shape)} vs {tuple(cur[k].shape)}" for k in cur
              if isinstance(model_state.get(k), torch.Tensor) and tuple(model_state[k].shape) != tuple(cur[k].shape)]
    if missing or unexpected or shapes:
        net = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs
                        if k.startswith("network") or k == "objective") or "not recorded"
        raise ResumeError(
            f"cannot resume from {path}: it was written by another network (settings: {net}). "
            f"{len(missing)} keys of this network are not in the checkpoint (e.g. {missing[:3]}), "
            f"{len(unexpected)} checkpoint keys are not in this network (e.g. {unexpected[:3]}), "
            f"{len(shapes)} have another shape, checkpoint vs now (e.g. {shapes[:3]}). Build the network the "
            "checkpoint was trained with, or train into another output_dir.")
    if not isinstance(old, Mapping):
        logger.warning("%s records no run settings (an older checkpoint): the resume is not checked against them.",
                       path)
        return
    if diffs:
        text = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs)
        if not force:
            raise ResumeError(f"refusing to resume from {path}: run-defining settings differ from the checkpoint's "
                              f"({text}). Restore them, or set resume_force: true (--resume_force true) to go on "
                              "from the checkpoint with the new settings.")
        logger.warning("resuming from %s with changed settings (resume_force): %s", path, text)


def _resolve_resume(resume_from: Any, dirs: Sequence[Path]) -> Path | None:
    if resume_from in (None, ""):
        return None
    if str(resume_from) == "auto":
        for d in dirs:
            found = find_last_checkpoint(d)
            if found is not None:
                return found
        logger.info("resume_from auto: no checkpoint in %s; starting a new run.", ", ".join(map(str, dirs)) or "-")
        return None
    path = Path(resume_from)
    if path.is_dir():
        found = find_last_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no {CHECKPOINT_PREFIX}_<iteration>.pt in {path} to resume from.")
        return found
    return path


def _strict_run(run: Callable[..., Any]) -> Callable[..., Any]:
    """``trainer.run`` whose ``max_epochs``/``max_iters``/``epoch_length`` may be numeric strings (a bundle's
    ``--epochs "10"``); anything else that is not a positive integer is refused naming the option."""

    def strict_run(data: Any = None, max_epochs: Any = None, max_iters: Any = None, epoch_length: Any = None) -> Any:
        return run(data, max_epochs=as_int(max_epochs, "epochs", low=1, allow_none=True),
                   max_iters=as_int(max_iters, "max_iters", low=1, allow_none=True),
                   epoch_length=as_int(epoch_length, "epoch_length", low=1, allow_none=True))

    return strict_run


def _set_sampler_epoch(engine: Engine) -> None:
    """Tell the data loader's samplers (``DistributedSampler``, MONAI's included) which epoch starts (0-based).

    The sampler may sit behind batch samplers: ignite's ``DeterministicEngine`` rebuilds the loader around a
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


def create_trainer(method: nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int, *,
                   base_lr: float = 5e-4, batch_size: int = 256, warmup_epochs: float = 10.0, min_lr: float = 1e-6,
                   momentum_start: float | None = None, momentum_end: float = 1.0, clip_grad: float | None = 3.0,
                   amp: bool = False, device: str | torch.device | None = None, output_dir: str | os.PathLike | None = None,
                   checkpoint_every: int = 1, n_saved: int = 2, tensorboard: bool = True, progress: bool = True,
                   prepare_batch: Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor | None]] = default_prepare_batch,
                   resume_from: str | os.PathLike | None = None, deterministic: bool = True,
                   handlers: Sequence[Any] | None = None, resume_force: bool | str = False,
                   run_config: Mapping[str, Any] | None = None, compile: bool | str = False,
                   compile_mode: str | None = "default",
                   compile_backend: str | Callable[..., Any] = "inductor",
                   inferer: Callable[..., Any] | None = None, decollate: bool | str = False) -> Engine:
    """Build the ignite trainer of an :class:`~mfassl.method.MFASSL` run.

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
            :class:`~mfassl.checkpoints.CheckpointSaver`, the run history, or MONAI/ignite handlers).
        resume_force: resume even when the run-defining settings differ from the checkpoint's (a network
            whose keys or shapes differ is always refused). Also ``"true"``/``"false"``.
        run_config: extra run-defining settings to record and compare (JSON-able values).
        compile: run the step's forward (``method(images, axes, epoch)``, the whole loss computation)
            through ``torch.compile`` (:func:`compile_forward`); also ``"true"``/``"false"``. The first two
            steps compile (the second once the epoch leaves 0), and the step recompiles once when MFA switches
            on at ``t_mfa``; backward, clipping, optimizer and teacher updates stay eager, and the checkpoints
            hold the uncompiled state dict. Not a run-defining setting (resumes either way).
        compile_mode: the ``torch.compile`` mode, one of :data:`COMPILE_MODES` (``"default"``; checked even
            when ``compile`` is off).
        compile_backend: the ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` / ``"eager"`` to debug;
            its name is checked when ``compile`` is on).
        inferer: a MONAI ``Inferer`` (or any ``inferer(inputs, network, *args, **kwargs)``) that runs the step's
            forward as ``inferer(images, method, axes, epoch=epoch)``; None calls the method directly (the same
            as MONAI's ``SimpleInferer``).
        decollate: True (or ``"true"``): ``trainer.state.output`` is ``[record]``, a list of one dict, the form of
            MONAI's engines (whose decollated outputs repeat the batch's scalars in every item), so MONAI's
            handlers and ``from_engine([...], first=True)`` read it; False: the dict itself.

    Returns:
        The trainer; ``trainer.state.output`` is the step's dict of floats (``[dict]`` with ``decollate``;
        :func:`step_record` gives the dict either way) and ``trainer.optimizer`` the optimizer.
        ``trainer.run(loader, max_epochs)``.
        ``trainer.compile_settings`` is ``{"mode": ..., "backend": ...}`` with ``compile``, else None.

    Raises:
        ResumeError: the checkpoint holds another network, or other settings without ``resume_force``.
        ValueError: a bad ``compile``, ``compile_mode`` or ``compile_backend`` (naming the option).
    """
    force = as_bool(resume_force, "resume_force")
    decollate = as_bool(decollate, "decollate")
    device = torch.device(device) if device is not None else idist.device()
    core = _unwrap(method).to(device)
    model = idist.auto_model(core, find_unused_parameters=True) if idist.get_world_size() > 1 else core
    compile_settings: dict[str, Any] | None = None
    forward = model
    compile_mode = _compile_mode(compile_mode)  # checked even when compile is off (a typo is not ignored)
    if isinstance(getattr(method, "_orig_mod", None), nn.Module) and model is core:
        forward = method  # the caller's own torch.compile(method); checkpoints still hold ``core``
    if as_bool(compile, "compile"):
        forward = compile_forward(model, compile_mode, compile_backend)
        compile_settings = {"mode": compile_mode,
                            "backend": compile_backend.strip() if isinstance(compile_backend, str)
                            else getattr(compile_backend, "__name__", repr(compile_backend))}
        logger.info("the step's forward runs through torch.compile (mode %s, backend %s); the first steps compile.",
                    compile_settings["mode"], compile_settings["backend"])
    use_amp = as_bool(amp, "amp") and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # bundle values may arrive as command-line strings ("10", "1e-3"): parse them strictly (mfassl.options)
    steps_per_epoch = as_int(steps_per_epoch, "steps_per_epoch", low=0)
    max_epochs, batch_size = as_int(max_epochs, "max_epochs", low=1), as_int(batch_size, "batch_size", low=1)
    checkpoint_every = as_int(checkpoint_every, "checkpoint_every", low=1)
    n_saved, deterministic = as_int(n_saved, "n_saved", low=1), as_bool(deterministic, "deterministic")
    base_lr, min_lr = as_float(base_lr, "base_lr", low=0.0), as_float(min_lr, "min_lr", low=0.0)
    warmup_epochs = as_float(warmup_epochs, "warmup_epochs", low=0.0)
    clip_grad = as_float(clip_grad, "clip_grad", low=0.0, allow_none=True)
    total_steps = max(1, steps_per_epoch * max_epochs)
    warmup_steps = warmup_epochs * steps_per_epoch
    peak_lr = scaled_lr(base_lr, batch_size)
    m_start = momentum_start if momentum_start is not None else getattr(core, "teacher_momentum", None)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def train_step(engine: Engine, batch: Any) -> dict[str, float] | list[dict[str, float]]:
        step = engine.state.iteration - 1
        epoch = step / max(steps_per_epoch, 1)
        lr = warmup_cosine(step, total_steps, warmup_steps, peak_lr, min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        images, axes = prepare_batch(batch, device)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = forward(images, axes, epoch=epoch) if inferer is None else inferer(images, forward, axes, epoch=epoch)
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
        return [result] if decollate else result

    trainer: Engine = DeterministicEngine(train_step) if deterministic else Engine(train_step)
    trainer.logger = logging.getLogger("mfassl.trainer")
    trainer.optimizer = optimizer  # where MONAI's handlers (StatsHandler, MLFlowHandler) read the lr
    trainer.run = _strict_run(trainer.run)  # type: ignore[method-assign]
    if idist.get_world_size() > 1:
        # every rank finishes its last collective before any of them goes on to tear the group down
        trainer.add_event_handler(Events.COMPLETED, lambda _: idist.barrier())
    # a DistributedSampler shuffles by its epoch number, which nothing else sets: without this every epoch
    # reads the data in the first epoch's order (keyed on the engine's epoch, so a resumed run gets its order)
    trainer.add_event_handler(Events.EPOCH_STARTED, _set_sampler_epoch)

    settings = run_settings(core, batch_size=batch_size, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs,
                            warmup_epochs=warmup_epochs, base_lr=base_lr, min_lr=min_lr, extra=run_config)
    to_save: dict[str, Any] = {"model": core, "optimizer": optimizer, "trainer": _TrainerState(trainer),
                               "run": _Settings(settings)}
    if use_amp:
        to_save["scaler"] = scaler
    trainer.checkpoint_objects = to_save  # what a CheckpointSaver writes
    trainer.run_settings = settings
    trainer.compile_settings = compile_settings

    if handlers is None:
        handlers = []
        if as_bool(progress, "progress"):
            handlers.append(ProgressHandler())
        if output_dir is not None:
            handlers.append(CheckpointSaver(Path(output_dir) / "checkpoints", n_saved=n_saved, every=checkpoint_every))
            if as_bool(tensorboard, "tensorboard"):
                handlers.append(TensorBoardHandler(Path(output_dir) / "tb"))
    handlers = list(handlers)
    for i, h in enumerate(handlers):
        if not callable(getattr(h, "attach", None)):
            raise TypeError(f"handlers[{i}] ({type(h).__name__}) has no attach(engine) method.")

    dirs = [h.save_dir for h in handlers if isinstance(h, CheckpointSaver)]
    if output_dir is not None:
        dirs.append(Path(output_dir) / "checkpoints")
    path = _resolve_resume(resume_from, dirs)
    if path is not None:
        ckpt = load_checkpoint(path, map_location=device)
        _check_resume(path, ckpt, settings, core, force)
        try:
            for key in ("model", "optimizer", "trainer", "scaler"):
                if key not in to_save:
                    continue
                if key not in ckpt:
                    if key == "scaler":
                        logger.warning("%s holds no AMP scaler state: the scaler starts afresh.", path)
                        continue
                    raise KeyError(f"no '{key}' entry")
                if key == "optimizer":
                    _load_optimizer_state(to_save[key], ckpt[key])
                else:
                    to_save[key].load_state_dict(ckpt[key])
        except Exception as err:
            raise ResumeError(f"cannot resume from {path}: {type(err).__name__}: {err}") from err
        if force and int(trainer.state.epoch_length or steps_per_epoch) != steps_per_epoch:
            trainer.state.epoch_length = steps_per_epoch
            trainer.state.epoch = trainer.state.iteration // steps_per_epoch
        logger.info("resumed from %s at epoch %d, iteration %d", path, trainer.state.epoch, trainer.state.iteration)
        trainer.state.resumed_from = str(path)

    for h in handlers:
        h.attach(trainer)

    @trainer.on(Events.STARTED)
    def _within_schedule(engine: Engine) -> None:
        if engine.state.max_epochs is not None and engine.state.max_epochs > max_epochs:
            raise ValueError(f"trainer.run(max_epochs={engine.state.max_epochs}) goes past the {max_epochs} epochs the "
                             "lr and momentum schedules plan (create_trainer max_epochs; a bundle's schedule_epochs): "
                             f"set it to at least {engine.state.max_epochs}.")

    return trainer


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
        enabled: False (or ``"false"``) attaches nothing.
    """

    def __init__(self, keys: Sequence[str] = ("loss", "gate_mean"), enabled: bool | str = True) -> None:
        self.keys = tuple(keys)
        self.enabled = as_bool(enabled, "progress")

    def attach(self, engine: Engine) -> "ProgressHandler":
        if self.enabled and idist.get_rank() == 0:
            ProgressBar(persist=False, bar_format=None).attach(
                engine, output_transform=lambda out: {k: v for k, v in step_record(out).items() if k in self.keys})
        return self


class TensorBoardHandler:
    """Every finite scalar of the step's output as ``train/<name>`` at its iteration (rank 0).

    A resumed run purges the events after the checkpoint's iteration, so the curves hold each step once.

    Args:
        log_dir: the TensorBoard folder (``<output_dir>/tb``).
        enabled: False (or ``"false"``) attaches nothing.
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool | str = True) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = as_bool(enabled, "tensorboard")
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
