"""Encoder files and training checkpoints: the one place that writes, reads and converts them.

Three kinds of file hold a pretrained encoder:

- an **encoder file** (``models/model.pt`` of a bundle, written by :func:`save_encoder`): the encoder's state
  dict, keys relative to the encoder, no aliased duplicates (``MFAViT`` holds its blocks both as
  ``encoder.blocks`` and ``blocks``; only the first name is stored), with a sidecar ``model.json`` that
  describes the network (``{"backbone": registry name, "config": constructor arguments}``);
- a **training checkpoint** (``checkpoints/checkpoint_<iteration>.pt``, written by :class:`CheckpointSaver`):
  ``{"model": MFASSL state dict, "optimizer", "trainer", "run": run settings}``; the encoder is the student
  under ``objective.backbone.``, and ``run["network"]`` describes it;
- a face **backbone file** (``backbone.pt`` of ``python -m mfassl_faces pretrain``):
  ``{"backbone_name", "backbone_config", "backbone_state"}``.

:func:`load_encoder` reads any of them (or a state dict of any of them, DDP ``module.`` prefixes included)
into a network with strict keys and returns an :class:`EncoderLoadReport`; every failure raises
:class:`EncoderLoadError` naming the file. :func:`export_encoder` (``python -m mfassl export-encoder``) writes a
plain state dict for a stock network: timm ``VisionTransformer`` (2D MFA-ViT), MONAI ``ViT`` (3D MFA-ViT) or
the ``swinViT`` of MONAI ``SwinUNETR`` (MFA-Swin), with a sidecar JSON giving the constructor arguments.

Example::

    save_encoder(method, "models/model.pt")                   # + models/model.json
    report = load_encoder(create_backbone("mfa_vit", ...), "runs/pretrain/checkpoints/checkpoint_800.pt")
    export_encoder("models/model.pt", "timm", "vit_timm.pt")  # + vit_timm.json
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mfassl.files import OutputGuard, atomic_path, atomic_write

__all__ = [
    "CHECKPOINT_PREFIX",
    "ENCODER_PREFIXES",
    "EXPORT_TARGETS",
    "MLP_KEY_ALIASES",
    "PART_PREFIXES",
    "WEIGHT_FORMATS",
    "CheckpointSaver",
    "EncoderFile",
    "EncoderFileNotFoundError",
    "EncoderLoadError",
    "EncoderLoadReport",
    "atomic_save",
    "build_encoder",
    "describe_encoder",
    "encoder_of",
    "encoder_state_dict",
    "export_encoder",
    "extract_encoder_state",
    "find_checkpoints",
    "find_last_checkpoint",
    "load_checkpoint",
    "load_encoder",
    "read_encoder_file",
    "save_encoder",
    "save_weights",
    "weight_format",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
"""Training checkpoints are ``<prefix>_<iteration>.pt``."""

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

WEIGHT_FORMATS: tuple[str, ...] = ("pt", "safetensors")
"""File formats :func:`export_encoder` writes: ``torch.save`` (``.pt``) or safetensors (``.safetensors``: timm's
and the Hugging Face Hub's format, read without pickle)."""

EXPORT_TARGETS: tuple[str, ...] = ("timm", "monai", "swinunetr")
"""Stock networks :func:`export_encoder` writes for."""


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


# ---------------------------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`mfassl.files.atomic_write`).

    Whatever fails (``torch.save`` itself, the final flush on a full disk, an interrupt), the temporary file
    is removed and an earlier file at ``path`` is left untouched; a full disk raises
    :class:`~mfassl.files.NoSpaceError` (``no space left on <path>``) instead of torch's ``unexpected pos``.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def _save_with_sidecar(state: Mapping[str, Any], path: Path, meta: Mapping[str, Any] | None, indent: int,
                       fmt: str = "pt", metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` to ``path`` (as :func:`save_weights` writes ``fmt``) and ``meta`` to its sidecar together:
    both files are complete before either replaces an earlier one, so a full disk leaves the earlier pair as it
    was."""
    with contextlib.ExitStack() as stack:
        weights = stack.enter_context(atomic_path(path))
        side = stack.enter_context(atomic_path(_sidecar(path))) if meta is not None else None
        _write_weights(state, weights, fmt, metadata)
        if side is not None:
            side.write_text(json.dumps(meta, indent=indent) + "\n")


_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)\.pt$")


def find_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every ``checkpoint_<iteration>.pt`` in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name)))


def find_last_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest iteration in ``directory`` (None if there is none)."""
    found = find_checkpoints(directory)
    return found[-1][1] if found else None


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


# ---------------------------------------------------------------------------------------------- encoders
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
    from mfassl.backbones import MFASwin, MFAViT

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
    from mfassl.backbones import create_backbone

    if not isinstance(description, Mapping) or "backbone" not in description or "config" not in description:
        raise EncoderLoadError(f"an encoder description needs 'backbone' and 'config', got {description!r}.")
    try:
        return create_backbone(str(description["backbone"]), **dict(description["config"]))
    except (TypeError, ValueError, KeyError) as err:
        raise EncoderLoadError(f"cannot build the encoder {description!r}: {err}") from err


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


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
    _save_with_sidecar(state, path, meta, indent=4)
    logger.info("saved the encoder (%d tensors) to %s", len(state), path)
    return path


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
    if path is not None and _sidecar(path).is_file():
        try:
            meta = json.loads(_sidecar(path).read_text())
        except (OSError, ValueError) as err:
            raise EncoderLoadError(f"{_sidecar(path)} (the description of {source}) cannot be read: {err}") from err
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


def _pretrained_encoder(checkpoint: str | os.PathLike | Mapping[str, Any],
                        description: Mapping[str, Any] | None) -> tuple[nn.Module, EncoderFile]:
    src = read_encoder_file(checkpoint)
    desc = description if description is not None else src.description
    if desc is None:
        raise EncoderLoadError(f"{src.source} does not say which network it holds (no sidecar "
                               f"{Path(src.source).with_suffix('.json').name}, no run settings): pass the "
                               "description, e.g. --config '{\"backbone\": \"mfa_vit\", \"config\": {...}}'.")
    backbone = build_encoder(desc)
    load_encoder(backbone, src)
    return backbone.eval(), src


# ---------------------------------------------------------------------------------------------- export
def _stock_timm(bb: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    enc = bb.encoder
    blk = enc.blocks[0]
    kwargs = dict(img_size=[int(s) for s in enc.patch_embed.img_size], patch_size=int(bb.patch_size[0]),
                  in_chans=int(bb.in_chans), num_classes=0, global_pool=str(enc.global_pool),
                  embed_dim=int(bb.embed_dim), depth=len(enc.blocks), num_heads=int(blk.attn.num_heads),
                  mlp_ratio=blk.mlp.fc1.out_features / int(bb.embed_dim), qkv_bias=blk.attn.qkv.bias is not None,
                  class_token=enc.cls_token is not None, dynamic_img_size=True)
    return kwargs, encoder_state_dict(enc)


def _stock_monai_vit(bb: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    vit = bb.encoder
    c, p = int(bb.embed_dim), int(bb.patch_size[0])
    kwargs = dict(in_channels=int(bb.in_chans), img_size=[int(g) * p for g in bb._pos_grid], patch_size=[p] * 3,
                  hidden_size=c, mlp_dim=int(vit.blocks[0].mlp.linear1.out_features), num_layers=len(vit.blocks),
                  num_heads=int(vit.blocks[0].attn.num_heads), proj_type="conv", pos_embed_type="learnable",
                  classification=True, num_classes=c, post_activation="none", qkv_bias=True, spatial_dims=3)
    state = encoder_state_dict(vit)
    state["cls_token"] = bb.cls_token.detach().cpu().clone()
    state["classification_head.weight"] = torch.eye(c)  # the head passes the class token through unchanged
    state["classification_head.bias"] = torch.zeros(c)
    return kwargs, state


def _stock_swinunetr(bb: nn.Module, out_channels: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    d = describe_encoder(bb)["config"]
    kwargs = dict(in_channels=d["in_chans"], out_channels=int(out_channels), patch_size=d["patch_size"],
                  depths=d["depths"], num_heads=d["num_heads"], window_size=d["window_size"],
                  feature_size=d["embed_dim"], spatial_dims=d["spatial_dims"], use_v2=d["use_v2"])
    return kwargs, encoder_state_dict(bb.swinViT)


_STOCK = {
    "timm": ("timm.models.vision_transformer.VisionTransformer",
             "model = VisionTransformer(**kwargs); model.load_state_dict(LOAD(OUT), strict=True)",
             "features = model(x)  # (B, embed_dim): the class token after the final norm"),
    "monai": ("monai.networks.nets.ViT",
              "net = ViT(**kwargs); net.load_state_dict(LOAD(OUT), strict=True)",
              "features = net(x)[0]  # (B, hidden_size): the class token after the final norm (identity head)"),
    "swinunetr": ("monai.networks.nets.SwinUNETR",
                  "net = SwinUNETR(**kwargs); net.swinViT.load_state_dict(LOAD(OUT), strict=True)",
                  "features = net.swinViT(x)[-1].flatten(2).mean(-1)  # (B, 16 * feature_size)"),
}
_LOADERS = {"pt": "torch.load", "safetensors": "safetensors.torch.load_file"}


def weight_format(out: str | os.PathLike, fmt: str | None = None) -> str:
    """The file format of ``out``: ``fmt`` if given (it must fit the suffix), else ``"safetensors"`` for a
    ``.safetensors`` file and ``"pt"`` otherwise.

    Raises:
        ValueError: an unknown format, or one that the suffix contradicts (``--format safetensors --out x.pt``).
    """
    suffix_fmt = "safetensors" if Path(out).suffix == ".safetensors" else "pt"
    if fmt is None:
        return suffix_fmt
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(WEIGHT_FORMATS)}, got {fmt!r}.")
    if fmt != suffix_fmt:
        want = ".safetensors" if fmt == "safetensors" else "a name not ending in .safetensors (e.g. .pt)"
        raise ValueError(f"--format {fmt} writes {want}; --out is {out}.")
    return fmt


def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike, fmt: str = "pt",
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state dict atomically as ``torch.save`` (``fmt="pt"``) or safetensors (``fmt="safetensors"``,
    tensors made contiguous, ``metadata`` strings in the header with ``{"format": "pt"}``)."""
    with atomic_path(path) as tmp:
        _write_weights(state, tmp, fmt, metadata)
    return Path(path)


def _write_weights(state: Mapping[str, torch.Tensor], path: Path, fmt: str,
                   metadata: Mapping[str, str] | None) -> None:
    """Write ``state`` to ``path`` (a temporary file of :func:`~mfassl.files.atomic_path`) in ``fmt``."""
    if fmt == "pt":
        with open(path, "wb") as f:
            torch.save(dict(state), f)
        return
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path),
              metadata={"format": "pt", **dict(metadata or {})})


def _stock_features(to: str, kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                    x: torch.Tensor) -> torch.Tensor:
    """Build the stock network, load ``state`` strictly and return its features of ``x``."""
    if to == "timm":
        from timm.models.vision_transformer import VisionTransformer

        net = VisionTransformer(**kwargs)
        net.load_state_dict(state, strict=True)
        return net.eval()(x)
    if to == "monai":
        from monai.networks.nets import ViT

        net = ViT(**kwargs)
        net.load_state_dict(state, strict=True)
        return net.eval()(x)[0]
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(**kwargs)
    net.swinViT.load_state_dict(state, strict=True)
    return net.eval().swinViT(x)[-1].flatten(2).mean(-1)


def _export_sidecar_reason(path: Path, weights: str | None = None) -> str | None:
    """None when ``path`` is a sidecar :func:`export_encoder` wrote (for the weights file ``weights``), else why not."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return "not a JSON file"
    if not (isinstance(meta, dict) and meta.get("target") in EXPORT_TARGETS and "class" in meta and "kwargs" in meta):
        return "not the description of an export-encoder file"
    if weights is not None and meta.get("weights") != weights:
        return f"it describes {meta.get('weights')!r}, not {weights!r}"
    return None


def _check_export_outputs(checkpoint: Any, out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is the model read (or its sidecar), or a foreign file unless ``overwrite``."""
    inputs = [] if isinstance(checkpoint, Mapping) else [Path(checkpoint), _sidecar(Path(checkpoint))]
    guard = OutputGuard(inputs, overwrite=overwrite)
    kind = "a file of python -m mfassl export-encoder"
    guard.check(out, "--out", what="the weights file", kind=kind,
                recognise=lambda p: None if _export_sidecar_reason(_sidecar(p), p.name) is None else
                "no export-encoder description beside it names it")
    guard.check(_sidecar(out), "--out", value=out, what="its description",
                recognise=lambda p: _export_sidecar_reason(p, out.name), kind=kind)


def export_encoder(checkpoint: str | os.PathLike | Mapping[str, Any], to: str, out: str | os.PathLike,
                   description: Mapping[str, Any] | None = None, out_channels: int = 3,
                   verify: bool = True, fmt: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a pretrained encoder as a plain state dict for a stock network, and a sidecar JSON saying how.

    Args:
        checkpoint: ``models/model.pt`` (with its ``model.json``), a training checkpoint or a face ``backbone.pt``.
        to: ``"timm"`` (timm ``VisionTransformer``; 2D MFA-ViT), ``"monai"`` (MONAI ``ViT`` with
            ``classification=True`` and an identity head, so ``net(x)[0]`` is the feature; 3D MFA-ViT) or
            ``"swinunetr"`` (the ``swinViT`` of MONAI ``SwinUNETR``; MFA-Swin).
        out: the state dict to write (``OUT.pt`` or ``OUT.safetensors``); the sidecar is ``OUT.json``.
        description: the network (``{"backbone", "config"}``) when the file does not record it.
        out_channels: ``SwinUNETR``'s output channels in the stated constructor arguments (the decoder is not
            part of the export).
        verify: build the stock network here, load the file with ``strict=True`` and check that its features
            equal the encoder's plain forward on a random input (max abs difference recorded).
        fmt: ``"pt"`` (``torch.save``) or ``"safetensors"`` (no pickle; what timm's
            ``pretrained_cfg_overlay=dict(file=OUT)`` and ``safetensors.torch.load_file`` read); None: from the
            suffix of ``out`` (:func:`weight_format`).
        overwrite: replace an ``out`` (or its sidecar ``<out stem>.json``) that exists and was not written by
            this function; the model read and its sidecar are never replaced.

    Returns:
        the sidecar: ``{"target", "class", "kwargs", "weights", "load", "features", "input_shape", ...}``.

    Raises:
        ValueError: ``to`` is unknown or does not fit the encoder (e.g. ``timm`` for a Swin).
        EncoderLoadError: the file cannot be read or loaded, or the stock network disagrees with the encoder.
        mfassl.files.OutputIsInputError: ``out`` or ``OUT.json`` is ``checkpoint`` or its sidecar, or they are one
            file (``--out x.json``); checked before anything is read, whatever ``overwrite`` says.
        mfassl.files.ForeignOutputError: ``out`` or ``OUT.json`` exists, is not an earlier export (its sidecar
            naming it) and ``overwrite`` is off.
        mfassl.files.NoSpaceError: the disk is full; an earlier export is left as it was.
    """
    from mfassl.backbones import MFASwin, MFAViT

    if to not in EXPORT_TARGETS:
        raise ValueError(f"--to must be one of {', '.join(EXPORT_TARGETS)}, got {to!r}.")
    fmt = weight_format(out, fmt)
    _check_export_outputs(checkpoint, Path(out), overwrite)
    bb, src = _pretrained_encoder(checkpoint, description)
    kind = f"{bb.spatial_dims}D {type(bb).__name__}"
    fits = {"timm": isinstance(bb, MFAViT) and bb.spatial_dims == 2,
            "monai": isinstance(bb, MFAViT) and bb.spatial_dims == 3,
            "swinunetr": isinstance(bb, MFASwin)}
    if not fits[to]:
        raise ValueError(f"{src.source} holds a {kind}; --to {to} does not fit it (timm takes the 2D MFA-ViT, "
                         "monai the 3D MFA-ViT, swinunetr the MFA-Swin).")
    if to == "timm":
        kwargs, state = _stock_timm(bb)
        spatial = kwargs["img_size"]
    elif to == "monai":
        kwargs, state = _stock_monai_vit(bb)
        spatial = kwargs["img_size"]
    else:
        kwargs, state = _stock_swinunetr(bb, out_channels)
        spatial = [int(kwargs["patch_size"]) * 32] * int(kwargs["spatial_dims"])
    cls, load, feats = _STOCK[to]
    out = Path(out)
    meta: dict[str, Any] = {"target": to, "class": cls, "kwargs": kwargs, "weights": out.name, "format": fmt,
                            "load": load.replace("LOAD", _LOADERS[fmt]).replace("OUT", repr(str(out))),
                            "features": feats,
                            "input_shape": ["B", int(bb.in_chans), *spatial], "source": src.source,
                            "encoder": describe_encoder(bb)}
    if verify:
        x = torch.randn(2, int(bb.in_chans), *spatial, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = bb(x)
            try:
                theirs = _stock_features(to, kwargs, state, x)
            except Exception as err:  # the stock constructor or a strict load refusing
                raise EncoderLoadError(f"{cls}({kwargs}) does not take the exported weights of {src.source}: "
                                       f"{type(err).__name__}: {err}") from err
        diff = float((ours - theirs).abs().max())
        if diff > 1e-4:
            raise EncoderLoadError(f"{cls} gives other features than the encoder of {src.source} "
                                   f"(max abs difference {diff:.3g}); not written.")
        meta["verified_max_abs_diff"] = diff
    _save_with_sidecar(state, out, meta, indent=2, fmt=fmt, metadata={"mfassl_target": to, "mfassl_class": cls})
    logger.info("exported %s for %s to %s (%d tensors)", src.source, cls, out, len(state))
    return meta


# ---------------------------------------------------------------------------------------------- saver
class CheckpointSaver:
    """Handler that writes a full training checkpoint every ``every`` epochs and when the run completes,
    keeping the newest ``n_saved`` in ``save_dir``.

    Attach it through :func:`mfassl.engine.create_trainer` (``handlers=[...]``), which hands it the objects to
    save (model, optimizer, trainer state with RNG, AMP scaler, run settings). Each file is written atomically
    (:func:`atomic_save`); only after it is in place are older ones removed, so a failed save leaves the last
    good checkpoint and no temporary file. A full disk stops the run with :class:`~mfassl.files.NoSpaceError`
    (``no space left on <checkpoint path>``); ``resume_from="auto"`` then goes on from the last good one.
    Checkpoints already in the folder count towards ``n_saved`` (a resumed run prunes them too); files of a
    later iteration than the one just written are left alone.

    Args:
        save_dir: the folder (``<output_dir>/checkpoints``).
        n_saved: full checkpoints kept (at least 1).
        every: epochs between checkpoints (the last epoch is always saved).
    """

    def __init__(self, save_dir: str | os.PathLike, n_saved: int = 2, every: int = 1) -> None:
        self.save_dir = Path(save_dir)
        self.n_saved = _positive_int(n_saved, "n_saved")
        self.every = _positive_int(every, "checkpoint_every")
        self.objects: Mapping[str, Any] | None = None
        self._last = -1

    def attach(self, engine: Any) -> "CheckpointSaver":
        from ignite.engine import Events

        objects = getattr(engine, "checkpoint_objects", None)
        if not isinstance(objects, Mapping):
            raise TypeError("CheckpointSaver needs the trainer of mfassl.engine.create_trainer (its "
                            "checkpoint_objects); pass it in create_trainer(handlers=[...]).")
        self.objects = objects
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every) | Events.COMPLETED, self)
        engine.state.checkpoint_dir = str(self.save_dir)
        return self

    def __call__(self, engine: Any) -> None:
        import ignite.distributed as idist

        it = int(engine.state.iteration)
        if it == self._last or self.objects is None:
            return
        self._last = it
        if idist.get_rank() != 0:
            return
        path = self.save_dir / f"{CHECKPOINT_PREFIX}_{it}.pt"
        atomic_save({k: obj.state_dict() for k, obj in self.objects.items()}, path)
        logger.info("saved %s", path)
        self.prune(it)

    def prune(self, current: int) -> list[Path]:
        """Remove all but the newest ``n_saved`` checkpoints up to iteration ``current``; returns those removed."""
        found = find_checkpoints(self.save_dir)
        later = [p for i, p in found if i > current]
        if later:
            logger.warning("%s holds checkpoints of later iterations than %d (%s): left alone.", self.save_dir,
                           current, ", ".join(p.name for p in later[:3]))
        own = [p for i, p in found if i <= current]
        removed = own[:-self.n_saved] if len(own) > self.n_saved else []
        for p in removed:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            logger.info("removed %s (n_saved=%d)", p, self.n_saved)
        for stale in self.save_dir.glob(f".{CHECKPOINT_PREFIX}_*.pt.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return removed


def _positive_int(value: Any, key: str) -> int:
    try:
        out = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        out = None
    if out is None or out < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}.")
    return out
