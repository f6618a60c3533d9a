"""Encoder files: write a pretrained encoder, read it back from any file that holds one, and say what loaded.

Three kinds of file hold a pretrained encoder:

- an **encoder file** (``models/model.pt`` of a bundle, written by :func:`save_encoder`): the encoder's state
  dict, keys relative to the encoder, no aliased duplicates (``MFAViT`` holds its blocks both as
  ``encoder.blocks`` and ``blocks``; only the first name is stored), with a sidecar ``model.json`` that
  describes the network (``{"backbone": registry name, "config": constructor arguments}``);
- a **training checkpoint** (:mod:`mfassl.checkpoints`): the encoder is the student under
  ``objective.backbone.`` of its ``"model"``, and ``run["network"]`` describes it;
- a face **backbone file** (``backbone.pt`` of ``python -m mfassl_faces pretrain``):
  ``{"backbone_name", "backbone_config", "backbone_state"}``.

:func:`read_encoder_file` reads any of them; :func:`load_encoder` loads one (or a state dict of any of them, DDP
``module.`` prefixes included) into a network with strict keys and returns an :class:`EncoderLoadReport`; every
failure raises :class:`EncoderLoadError` naming the file. Weights and sidecar are written together through
:func:`save_with_sidecar` (:mod:`mfassl.files`). Export to stock networks is :mod:`mfassl.export`.

Example::

    save_encoder(method, "models/model.pt")                   # + models/model.json
    report = load_encoder(create_backbone("mfa_vit", ...), "runs/pretrain/checkpoints/checkpoint_800.pt")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import torch
from torch import nn

from mfassl.backbones import MFAViT, create_backbone
from mfassl.checkpoints import load_checkpoint
from mfassl.files import atomic_path

__all__ = [
    "ENCODER_PREFIXES",
    "MLP_KEY_ALIASES",
    "PART_PREFIXES",
    "EncoderFile",
    "EncoderFileNotFoundError",
    "EncoderLoadError",
    "EncoderLoadReport",
    "build_encoder",
    "describe_encoder",
    "encoder_of",
    "encoder_state_dict",
    "extract_encoder_state",
    "load_encoder",
    "read_encoder_file",
    "save_encoder",
    "save_with_sidecar",
    "sidecar_path",
]

logger = logging.getLogger(__name__)

ENCODER_PREFIXES: tuple[str, ...] = (
    "objective.backbone.",          # MFASSL state dict (a training checkpoint's "model"): the student
    "module.objective.backbone.",   # the same, DDP-wrapped
    "backbone.",                    # an objective's state dict
    "module.backbone.",
    "module.",                      # a DDP-wrapped encoder
    "",                             # the encoder's own state dict (models/model.pt, backbone.pt)
)
"""Where an encoder's keys sit in the state dicts :func:`load_encoder` reads; a ``part`` (e.g. ``swinViT``) is
appended to each. The prefix under which most keys fit the network wins (the first one on a tie)."""

PART_PREFIXES: tuple[str, ...] = ("module.", "")
"""Also tried for a ``part``: the part's own state dict (``export-encoder --to swinunetr`` writes
``SwinUNETR.swinViT``'s keys) and MONAI's self-supervised Swin weights (``{"state_dict": {"module.patch_embed...",
"module.layers1.0.blocks.0.mlp.fc1.weight", ...}}``, the layout ``SwinUNETR.load_from`` reads)."""

MLP_KEY_ALIASES: tuple[tuple[str, str], ...] = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))
"""timm-style MLP names of MONAI's self-supervised Swin weights and the names of MONAI's ``MLPBlock`` they map
to (as ``SwinTransformerBlock.load_from`` maps them); renamed only where the network has the new name."""


# ---------------------------------------------------------------------------------------------- errors
class EncoderLoadError(RuntimeError):
    """A pretrained encoder cannot be read or does not fit the network; the message names the file."""


class EncoderFileNotFoundError(EncoderLoadError, FileNotFoundError):
    """The encoder file or checkpoint does not exist."""


@dataclass
class EncoderLoadReport:
    """What :func:`load_encoder` did.

    Attributes:
        source: the file (or ``"<state dict>"``).
        prefix: the key prefix the encoder was found under (the ``part`` included).
        loaded: keys copied into the network (canonical names, aliases not repeated).
        missing: keys of the network absent from the file (left as initialised).
        unexpected: encoder keys of the file the network does not have.
        mismatched: ``(key, network shape, file shape)`` for keys present in both with other shapes.
        ignored: number of tensors of the file outside the encoder (heads, teacher, optimizer-free parts...).
    """

    source: str
    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: int = 0

    @property
    def ok(self) -> bool:
        """True when every key matched (strict loading succeeds)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, max_keys: int = 8) -> str:
        """A few lines for the log: counts, then the first offending keys."""

        def head(keys: Sequence[Any]) -> str:
            shown = ", ".join(str(k) for k in keys[:max_keys])
            return shown + (f", ... (+{len(keys) - max_keys})" if len(keys) > max_keys else "")

        lines = [f"encoder weights from {self.source} (prefix {self.prefix!r}): {len(self.loaded)} loaded, "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape mismatches, {self.ignored} non-encoder keys ignored"]
        if self.missing:
            lines.append(f"  missing: {head(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {head(self.unexpected)}")
        if self.mismatched:
            lines.append("  shape mismatches (network vs checkpoint): "
                         + head([f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched]))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- writing
def encoder_of(model: nn.Module) -> nn.Module:
    """The student encoder of an :class:`~mfassl.method.MFASSL` (DDP-wrapped or not), else ``model``."""
    model = getattr(model, "module", model)
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def _aliases(module: nn.Module) -> dict[str, str]:
    """``{alias key: canonical key}`` for state-dict entries that are the same tensor under two names."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for k, v in module.state_dict(keep_vars=True).items():
        if isinstance(v, torch.Tensor):
            name = first.setdefault(id(v), k)
            if name != k:
                out[k] = name
    return out


def encoder_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` (detached, on the CPU) without aliased duplicates: each tensor under its first
    name only (``encoder.blocks.0...`` of an ``MFAViT``, not also ``blocks.0...``)."""
    alias = _aliases(module)
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if k not in alias}


def describe_encoder(backbone: nn.Module) -> dict[str, Any]:
    """``{"backbone": registry name, "config": constructor arguments}`` of an MFA backbone, read off the module
    so that ``create_backbone(d["backbone"], **d["config"])`` builds the same network.

    Raises:
        EncoderLoadError: ``backbone`` is not an ``MFAViT`` or ``MFASwin``.
    """
    bb = encoder_of(backbone)
    mfa = dict(mfa_heads=int(bb.mfa.num_heads), eps=float(bb.mfa.eps), gate_distance=str(bb.mfa.gate_distance))
    if isinstance(bb, MFAViT):
        p = int(bb.patch_size[0])
        if bb.spatial_dims == 2:
            enc = bb.encoder
            img = [int(s) for s in enc.patch_embed.img_size]
            heads, hidden = int(enc.blocks[0].attn.num_heads), int(enc.blocks[0].mlp.fc1.out_features)
        else:
            img = [int(g) * p for g in bb._pos_grid]
            heads, hidden = int(bb.encoder.blocks[0].attn.num_heads), int(bb.encoder.blocks[0].mlp.linear1.out_features)
        cfg = dict(spatial_dims=bb.spatial_dims, img_size=img, patch_size=p, in_chans=int(bb.in_chans),
                   embed_dim=int(bb.embed_dim), depth=int(bb.depth), num_heads=heads,
                   mlp_ratio=hidden / int(bb.embed_dim), mfa_layer=int(bb.mfa_layer), **mfa)
        return {"backbone": "mfa_vit", "config": cfg}
    from mfassl.backbones.swin import MFASwin  # here, not at the top: a ViT run need not import MONAI

    if isinstance(bb, MFASwin):
        vit = bb.swinViT
        layers = [getattr(vit, f"layers{i}")[0] for i in range(1, 5)]
        cfg = dict(spatial_dims=bb.spatial_dims, in_chans=int(bb.in_chans), embed_dim=int(bb.base_dim),
                   depths=[len(layer.blocks) for layer in layers],
                   num_heads=[int(layer.blocks[0].attn.num_heads) for layer in layers],
                   window_size=[int(w) for w in vit.window_size], patch_size=int(bb.patch_size[0]),
                   mfa_stage=int(bb.mfa_stage), use_v2=bool(bb.use_v2), **mfa)
        return {"backbone": "mfa_swin", "config": cfg}
    raise EncoderLoadError(f"cannot describe a {type(bb).__name__}: only MFAViT and MFASwin encoders are supported.")


def build_encoder(description: Mapping[str, Any]) -> nn.Module:
    """The (randomly initialised) backbone a :func:`describe_encoder` description names."""
    if not isinstance(description, Mapping) or "backbone" not in description or "config" not in description:
        raise EncoderLoadError(f"an encoder description needs 'backbone' and 'config', got {description!r}.")
    try:
        return create_backbone(str(description["backbone"]), **dict(description["config"]))
    except (TypeError, ValueError, KeyError) as err:
        raise EncoderLoadError(f"cannot build the encoder {description!r}: {err}") from err


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar JSON of a weights file: ``models/model.pt`` -> ``models/model.json``."""
    return Path(path).with_suffix(".json")


def save_with_sidecar(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], meta: Mapping[str, Any] | None,
                      indent: int = 2) -> Path:
    """Write a weights file through ``write(binary file)`` (``lambda f: torch.save(state, f)``) and ``meta`` to
    its sidecar (:func:`sidecar_path`) together: both files are complete before either replaces an earlier one
    (:func:`mfassl.files.atomic_path`), so a full disk (:class:`~mfassl.files.NoSpaceError`) leaves the earlier
    pair as it was. ``meta`` None writes the weights alone. Returns ``Path(path)``."""
    with atomic_path(path) as weights:
        with open(weights, "wb") as f:  # written in full before the sidecar: a full disk here names ``path``
            write(f)
        if meta is not None:
            with atomic_path(sidecar_path(path)) as side:
                side.write_text(json.dumps(meta, indent=indent) + "\n")
    return Path(path)


def save_encoder(model: nn.Module, path: str | os.PathLike, description: Mapping[str, Any] | None = None) -> Path:
    """Write the encoder's state dict to ``path`` (and its description to ``<path stem>.json``), atomically.

    Args:
        model: an :class:`~mfassl.method.MFASSL` (its student backbone is saved) or the encoder itself.
        path: the file, usually ``<bundle_root>/models/model.pt``.
        description: the network's ``{"backbone", "config"}`` (default: :func:`describe_encoder`; nothing is
            written beside the weights when the network cannot be described).

    Returns:
        the path written: a plain state dict, keys relative to the encoder, no aliased duplicates. A crash while
        writing leaves an earlier file at ``path`` untouched and no temporary file.
    """
    path = Path(path)
    enc = encoder_of(model)
    state = encoder_state_dict(enc)
    if description is None:
        try:
            description = describe_encoder(enc)
        except EncoderLoadError as err:
            logger.info("no description written beside %s: %s", path, err)
    meta = None if description is None else {"format": "mfassl-encoder", "weights": path.name, "tensors": len(state),
                                             **dict(description)}
    save_with_sidecar(path, lambda f: torch.save(state, f), meta, indent=4)
    logger.info("saved the encoder (%d tensors) to %s", len(state), path)
    return path


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class EncoderFile:
    """An encoder source read by :func:`read_encoder_file`.

    Attributes:
        state: the state dict holding the encoder (a training checkpoint's ``"model"``, a backbone file's
            ``"backbone_state"``, or the file itself).
        source: the file name (``"<state dict>"`` for a mapping).
        description: ``{"backbone", "config"}`` when the file or its sidecar records it, else None.
        kind: ``"training checkpoint"``, ``"backbone file"`` or ``"state dict"``.
    """

    state: Mapping[str, Any]
    source: str
    description: dict[str, Any] | None = None
    kind: str = "state dict"


def _has_tensors(m: Any) -> bool:
    return isinstance(m, Mapping) and any(isinstance(v, torch.Tensor) for v in m.values())


def read_encoder_file(checkpoint: str | os.PathLike | Mapping[str, Any] | EncoderFile) -> EncoderFile:
    """Read an encoder file, training checkpoint or backbone file (or take a mapping of one).

    Raises:
        EncoderFileNotFoundError: the file does not exist.
        EncoderLoadError: it cannot be read or holds no state dict (the message names it).
    """
    if isinstance(checkpoint, EncoderFile):
        return checkpoint
    path: Path | None = None
    if isinstance(checkpoint, Mapping):
        ckpt, source = checkpoint, "<state dict>"
    else:
        path, source = Path(checkpoint), str(checkpoint)
        try:
            ckpt = load_checkpoint(path)
        except FileNotFoundError as err:
            raise EncoderFileNotFoundError(f"{err} Train first, or point at a models/model.pt or a "
                                           "checkpoint_<iteration>.pt.") from err
        except RuntimeError as err:
            raise EncoderLoadError(str(err)) from err
        if not isinstance(ckpt, Mapping):
            raise EncoderLoadError(f"{source} holds a {type(ckpt).__name__}, not a state dict.")
    description: dict[str, Any] | None = None
    if _has_tensors(ckpt.get("model")):
        run = ckpt.get("run")
        if isinstance(run, Mapping) and isinstance(run.get("network"), str):
            with contextlib.suppress(ValueError):
                description = json.loads(run["network"])
        return EncoderFile(ckpt["model"], source, description, "training checkpoint")
    if _has_tensors(ckpt.get("backbone_state")):
        cfg = ckpt.get("backbone_config")
        if isinstance(ckpt.get("backbone_name"), str) and isinstance(cfg, str):
            with contextlib.suppress(ValueError):
                description = {"backbone": ckpt["backbone_name"], "config": json.loads(cfg)}
        return EncoderFile(ckpt["backbone_state"], source, description, "backbone file")
    for key in ("state_dict", "network"):
        if _has_tensors(ckpt.get(key)):
            return EncoderFile(ckpt[key], source, None, "state dict")
    if path is not None and sidecar_path(path).is_file():
        try:
            meta = json.loads(sidecar_path(path).read_text())
        except (OSError, ValueError) as err:
            raise EncoderLoadError(f"{sidecar_path(path)} (the description of {source}) cannot be read: {err}") from err
        if isinstance(meta, Mapping) and "backbone" in meta and "config" in meta:
            description = {"backbone": meta["backbone"], "config": meta["config"]}
    return EncoderFile(ckpt, source, description, "state dict")


def extract_encoder_state(state: Mapping[str, Any], prefix: str | None = None, part: str | None = None,
                          target_keys: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], str, int]:
    """The encoder's tensors of ``state`` with their prefix removed.

    Args:
        state: a state dict (MFASSL, objective, encoder, SwinUNETR, DDP-wrapped...).
        prefix: the prefix to use; None tries :data:`ENCODER_PREFIXES` (+ ``part``).
        part: a sub-module of the encoder to take alone (``"swinViT"`` for a SwinUNETR's encoder).
        target_keys: the keys of the network to fill; the prefix that fits most of them wins. Without them
            the first prefix present wins.

    Returns:
        ``(encoder state, prefix used, number of other tensors)``.

    Raises:
        EncoderLoadError: no tensor fits under any prefix.
    """
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    tail = f"{part}." if part else ""
    candidates = [prefix] if prefix is not None else [p + tail for p in ENCODER_PREFIXES]
    if prefix is None and part:
        candidates += [p for p in PART_PREFIXES if p not in candidates]
    wanted = set(target_keys) if target_keys is not None else None
    best: tuple[int, str, dict[str, torch.Tensor]] | None = None
    for p in candidates:
        enc = {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
        if not enc:
            continue
        score = len(enc) if wanted is None else len(wanted & set(enc))
        if wanted is None:
            best = (score, p, enc)
            break
        if score > 0 and (best is None or score > best[0]):
            best = (score, p, enc)
    if best is None:
        what = "Swin encoder" if part == "swinViT" else "encoder"
        sample = ", ".join(list(tensors)[:5]) or "no tensors"
        raise EncoderLoadError(f"no {what} weights under {candidates} (first keys: {sample}).")
    _, used, enc = best
    return enc, used, len(tensors) - len(enc)


def _rename_mlp_keys(enc: dict[str, torch.Tensor], target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``enc`` with :data:`MLP_KEY_ALIASES` applied to keys the network lacks and has under the new name."""
    out = {}
    for k, v in enc.items():
        if k not in target:
            for old, new in MLP_KEY_ALIASES:
                if old in k and k.replace(old, new) in target:
                    k = k.replace(old, new)
                    break
        out[k] = v
    return out


def load_encoder(network: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any] | EncoderFile,
                 strict: bool = True, prefix: str | None = None, part: str | None = None) -> EncoderLoadReport:
    """Load pretrained encoder weights into ``network`` (or its sub-module ``part``).

    Args:
        network: the encoder built with its pretraining sizes (a bundle's ``network_def``), or a network holding
            the encoder as ``part`` (``SwinUNETR`` with ``part="swinViT"``).
        checkpoint: an encoder file (``models/model.pt``), a training checkpoint (``checkpoint_<iteration>.pt``),
            a face ``backbone.pt``, or a state dict of any of them.
        strict: refuse unless every key of the network is in the file with the same shape and the file's
            encoder has no extra key; nothing is copied then. False loads the matching keys and reports the rest.
        prefix: the key prefix in the file (default: found among :data:`ENCODER_PREFIXES`).
        part: load into ``getattr(network, part)`` from the file's ``<prefix><part>.`` keys.

    Returns:
        :class:`EncoderLoadReport`, also logged and kept as ``network.encoder_load_report``.

    Raises:
        EncoderFileNotFoundError: the file does not exist.
        EncoderLoadError: unreadable file, no encoder in it, or (``strict``) keys or shapes that differ.
    """
    target_module = network
    if part:
        target_module = getattr(network, part, None)
        if not isinstance(target_module, nn.Module):
            raise EncoderLoadError(f"{type(network).__name__} has no {part} encoder to load into.")
    src = read_encoder_file(checkpoint)
    alias = _aliases(target_module)
    full_target = target_module.state_dict()
    target = {k: v for k, v in full_target.items() if k not in alias}
    enc, used, ignored = extract_encoder_state(src.state, prefix, part, target_keys=list(full_target))
    enc = _rename_mlp_keys(enc, full_target)
    for k in [k for k in enc if k in alias]:  # files written before duplicates were dropped
        v = enc.pop(k)
        enc.setdefault(alias[k], v)
    report = EncoderLoadReport(source=src.source, prefix=used, ignored=ignored)
    report.missing = [k for k in target if k not in enc]
    report.unexpected = [k for k in enc if k not in target]
    report.mismatched = [(k, tuple(target[k].shape), tuple(enc[k].shape)) for k in target
                         if k in enc and tuple(target[k].shape) != tuple(enc[k].shape)]
    name = type(network).__name__ + (f".{part}" if part else "")
    if strict and not report.ok:
        raise EncoderLoadError(f"{src.source} does not fit {name} (were the network sizes changed since "
                               f"pretraining?):\n{report.summary()}")
    bad = {k for k, _, _ in report.mismatched}
    load = {k: v for k, v in enc.items() if k in target and k not in bad}
    expanded = dict(load)
    expanded.update({a: load[c] for a, c in alias.items() if c in load})
    target_module.load_state_dict(expanded, strict=strict)
    report.loaded = sorted(load)
    with contextlib.suppress(AttributeError, TypeError):
        network.encoder_load_report = report  # type: ignore[attr-defined]
    (logger.info if report.ok else logger.warning)("%s", report.summary())
    return report
