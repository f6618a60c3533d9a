"""Exact resume of a training run: what a checkpoint records about the run, the refusal of another run, and the
load back into a trainer.

A training checkpoint holds the entries of the trainer's ``to_save`` mapping (ignite's name; built by
:func:`mfassl.engine.create_trainer`, handed to :class:`~mfassl.checkpoints.CheckpointSaver` and to
:func:`resume`), each as its ``state_dict()``: ``model``, ``optimizer``, ``trainer`` (:class:`TrainerState`:
epoch, iteration and ignite's RNG states, stored as tensors so the file loads with ``weights_only=True``),
``run`` (:class:`RunSettings`: :func:`run_settings`, compared on resume, never loaded) and ``scaler`` with AMP.
No schedule is saved: the schedules (:mod:`mfassl.schedule_handlers`) are indexed by the trainer's iteration.

:func:`resume` reads a checkpoint into a trainer: :func:`check_resume` first refuses a checkpoint of another
network (always; the keys, shapes and network settings that differ are named) or of a run with other
run-defining settings (unless forced; each differing key is named with both values), then ignite's
``Checkpoint.load_objects`` loads the entries, the optimizer keeping its own kernel choice
(:class:`KernelKeepingOptimizer`). ignite's ``DeterministicEngine`` restores the data order and the RNG states
from the trainer's entry, so a resumed run computes the losses an uninterrupted one computes.

Example::

    path = resolve_resume("auto", [Path("runs/cxr/checkpoints")])
    if path is not None:
        resume(trainer, path, to_save, settings, device=device)   # ResumeError names the checkpoint and what differs
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine
from ignite.handlers import Checkpoint

from mfassl.checkpoints import CHECKPOINT_PREFIX, find_last_checkpoint, load_checkpoint
from mfassl.encoder_files import EncoderLoadError, describe_encoder

__all__ = [
    "KernelKeepingOptimizer",
    "ResumeError",
    "RunSettings",
    "TrainerState",
    "check_resume",
    "load_optimizer_state",
    "resolve_resume",
    "resume",
    "run_settings",
    "unwrap",
]

logger = logging.getLogger(__name__)


class ResumeError(ValueError):
    """A checkpoint cannot continue this run: another network, or run-defining settings that differ."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the parameters: through DDP's ``.module`` and ``torch.compile``'s ``._orig_mod``."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


# ------------------------------------------------------------------------------------- the trainer's entry
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


class TrainerState:
    """A trainer's ``state_dict`` (epoch, iteration, epoch length, ignite's RNG states) as a checkpoint entry,
    the RNG states stored as tensors (a checkpoint then loads with ``weights_only=True``)."""

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        sd = dict(self.trainer.state_dict())
        rng = sd.pop("rng_states", None)
        if rng is not None:
            sd["rng_tensors"] = _rng_to_tensors(rng)
        return sd

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        sd = dict(sd)
        rng = sd.pop("rng_tensors", None)
        if rng is not None:
            sd["rng_states"] = _rng_from_tensors(rng)
        self.trainer.load_state_dict(sd)


# ------------------------------------------------------------------------------------------ the optimizer
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
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


class KernelKeepingOptimizer:
    """An optimizer as an entry of ignite's ``to_load``: saves as itself, loads through
    :func:`load_optimizer_state` (the kernel choice of the code, not of the checkpoint)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_optimizer_state(self.optimizer, state)


# ------------------------------------------------------------------------------------------ run settings
class RunSettings:
    """The run settings as a checkpoint entry (``state_dict`` only; a resume compares them, never loads them)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Keeps this run's settings: a checkpoint's are compared (:func:`check_resume`), never taken over (so
        ``Checkpoint.load_objects(to_save, ckpt)`` works as ignite's examples write it)."""


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
    core = unwrap(method)
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


def check_resume(path: Path, ckpt: Mapping[str, Any], settings: Mapping[str, Any], core: nn.Module,
                 force: bool) -> None:
    """Refuse a checkpoint of another network, or (unless ``force``) of a run with other settings.

    Args:
        path: the checkpoint (named in every message).
        ckpt: its contents (:func:`~mfassl.checkpoints.load_checkpoint`).
        settings: this run's :func:`run_settings`.
        core: this run's module (its state dict's keys and shapes are compared with ``ckpt["model"]``).
        force: go on (with a warning naming them) when only run-defining settings differ.

    Raises:
        ResumeError: naming ``path``: no ``model`` entry; keys or shapes that differ (with the network settings
            that differ), whatever ``force`` says; settings that differ (each as ``key: old in the checkpoint,
            new now``) without ``force``.
    """
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


def resolve_resume(resume_from: Any, dirs: Sequence[Path]) -> Path | None:
    """The checkpoint to resume from: None for ``None``/``""``; for ``"auto"`` the latest checkpoint of the first
    of ``dirs`` that holds one (None, logged, when none does); for a folder its latest checkpoint
    (``FileNotFoundError`` when it holds none); else the path itself."""
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


def resume(trainer: Engine, path: Path, to_save: Mapping[str, Any], settings: Mapping[str, Any], *,
           device: torch.device | str, force: bool = False) -> None:
    """Continue ``trainer``'s run from the checkpoint at ``path``.

    Args:
        trainer: the engine whose state ``to_save["trainer"]`` holds (its epoch is counted anew after a forced
            resume with another ``steps_per_epoch``); ``trainer.state.resumed_from`` is set.
        path: the checkpoint (:func:`resolve_resume`).
        to_save: the entries the checkpoints hold (``model``, ``optimizer``, ``trainer``, ``run``, and ``scaler``
            with AMP): each is loaded (``run`` only compared; the optimizer keeps its own kernel choice; a
            checkpoint without a scaler starts the scaler afresh, with a warning).
        settings: this run's :func:`run_settings` (what :func:`check_resume` compares).
        device: where the checkpoint's tensors are loaded.
        force: go on when only run-defining settings differ.

    Raises:
        ResumeError: from :func:`check_resume`, or an entry that cannot be loaded (naming ``path``).
    """
    ckpt = load_checkpoint(path, map_location=device)
    check_resume(path, ckpt, settings, to_save["model"], force)
    to_load = {k: KernelKeepingOptimizer(v) if k == "optimizer" else v for k, v in to_save.items() if k != "run"}
    if "scaler" in to_load and "scaler" not in ckpt:
        logger.warning("%s holds no AMP scaler state: the scaler starts afresh.", path)
        del to_load["scaler"]
    try:
        missing = [k for k in to_load if k not in ckpt]
        if missing:
            raise KeyError(f"no {missing[0]!r} entry")
        Checkpoint.load_objects(to_load, ckpt)
    except Exception as err:
        raise ResumeError(f"cannot resume from {path}: {type(err).__name__}: {err}") from err
    steps_per_epoch = int(settings["steps_per_epoch"])
    if force and steps_per_epoch > 0 and int(trainer.state.epoch_length or steps_per_epoch) != steps_per_epoch:
        trainer.state.epoch_length = steps_per_epoch
        trainer.state.epoch = trainer.state.iteration // steps_per_epoch
    logger.info("resumed from %s at epoch %d, iteration %d", path, trainer.state.epoch, trainer.state.iteration)
    trainer.state.resumed_from = str(path)
