"""The pretrained encoder as a file: what the pretraining bundles leave in ``models/model.pt`` and what
their ``evaluate.json``, ``inference.json`` and ``ckpt_export`` read back.

``models/model.pt`` is the student encoder's state dict (the bundle's ``network_def``, MFA block included,
keys relative to it), written atomically at the end of a run. :func:`load_encoder` also takes a training
checkpoint (``checkpoint_<iteration>.pt``, whose ``"model"`` is the whole :class:`~mfassl.method.MFASSL`
state dict) and picks the encoder out of it, so evaluation can run on any saved iteration.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["ENCODER_KEY_PREFIXES", "save_encoder", "load_encoder"]

logger = logging.getLogger(__name__)

#: Where the encoder's keys sit in the state dicts this module reads, tried in order.
ENCODER_KEY_PREFIXES: tuple[str, ...] = ("objective.backbone.", "backbone.", "")


def _encoder_of(model: nn.Module) -> nn.Module:
    """The student encoder of an :class:`~mfassl.method.MFASSL` (or DDP-wrapped one), else ``model``."""
    model = getattr(model, "module", model)
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def save_encoder(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the encoder's state dict to ``path`` atomically (a temporary file, then a rename).

    Args:
        model: an :class:`~mfassl.method.MFASSL` (its student backbone is saved) or the encoder itself.
        path: the file, usually ``<bundle_root>/models/model.pt``.

    Returns:
        the path written. A crash while writing leaves an earlier file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _encoder_of(model).state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("saved the encoder (%d tensors) to %s", len(state), path)
    return path


def _state_of(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[Mapping[str, torch.Tensor], str]:
    if isinstance(checkpoint, Mapping):
        state, source = checkpoint, "<state dict>"
    else:
        from mfassl.engine import load_checkpoint  # weights_only=True; names a missing or corrupt file

        source = str(checkpoint)
        try:
            state = load_checkpoint(source)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} Run the bundle's train.json first, or set model_file to a "
                                    "models/model.pt or a checkpoint_<iteration>.pt.") from err
    if not isinstance(state, Mapping):
        raise RuntimeError(f"{source} holds a {type(state).__name__}, not a state dict.")
    inner = state.get("model")
    if isinstance(inner, Mapping):
        state = inner
    return state, source


def load_encoder(network: nn.Module, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                 strict: bool = True) -> nn.Module:
    """Load pretrained encoder weights into ``network`` (the bundle's ``network_def``) and return it.

    Args:
        network: the encoder, built with the sizes it was pretrained with.
        checkpoint: ``models/model.pt`` (see :func:`save_encoder`), a training checkpoint
            ``checkpoint_<iteration>.pt``, or a state dict of either kind.
        strict: raise when keys or shapes differ (False loads what matches and logs the rest).

    Raises:
        FileNotFoundError / RuntimeError: the file is missing, unreadable or holds no state dict (the message
            names it); the keys under every prefix of :data:`ENCODER_KEY_PREFIXES` do not fit the network.
    """
    state, source = _state_of(checkpoint)
    target = network.state_dict()
    for prefix in ENCODER_KEY_PREFIXES:
        enc = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
        if any(k in target for k in enc):
            break
    else:
        sample = ", ".join(list(state)[:4])
        raise RuntimeError(f"{source}: no encoder weights for {type(network).__name__} (first keys: {sample}).")
    missing = [k for k in target if k not in enc]
    unexpected = [k for k in enc if k not in target]
    mismatched = [k for k in target if k in enc and enc[k].shape != target[k].shape]
    if strict and (missing or unexpected or mismatched):
        raise RuntimeError(
            f"{source} does not fit {type(network).__name__} (were the network sizes changed since pretraining?): "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} with another shape (e.g. {mismatched[:3]}).")
    network.load_state_dict({k: v for k, v in enc.items() if k in target and k not in mismatched}, strict=False)
    if missing or unexpected or mismatched:
        logger.warning("%s: loaded %d tensors; missing %d, unexpected %d, mismatched %d", source,
                       len(enc) - len(unexpected) - len(mismatched), len(missing), len(unexpected), len(mismatched))
    return network
