"""Export to stock networks: a pretrained encoder written as a plain state dict that timm or MONAI load.

:func:`export_encoder` (``python -m mfassl export-encoder``) reads any encoder source of
:mod:`mfassl.encoder_files` and writes the weights of a stock network: timm ``VisionTransformer`` (2D MFA-ViT),
MONAI ``ViT`` (3D MFA-ViT) or the ``swinViT`` of MONAI ``SwinUNETR`` (MFA-Swin), as ``torch.save`` or
safetensors (:data:`WEIGHT_FORMATS`), with a sidecar JSON giving the class, its constructor arguments and the
lines that load it. The stock network is built here and its features checked against the encoder's before
anything is written. Its outputs are checked by :class:`mfassl.files.OutputGuard` before the model is read
(never the model or its sidecar; an existing file only when it is an earlier export, or with ``overwrite``),
and weights and sidecar are written as a pair (:func:`mfassl.encoder_files.save_with_sidecar`).

Example::

    export_encoder("models/model.pt", "timm", "vit_timm.pt")           # + vit_timm.json
    export_encoder("models/model.pt", "timm", "vit_timm.safetensors")  # + vit_timm.json, no pickle
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import safetensors.torch
import torch
from torch import nn

from mfassl.backbones import MFAViT
from mfassl.encoder_files import (EncoderFile, EncoderLoadError, build_encoder, describe_encoder,
                                  encoder_state_dict, load_encoder, read_encoder_file, save_with_sidecar,
                                  sidecar_path)
from mfassl.files import OutputGuard, atomic_write

__all__ = [
    "EXPORT_TARGETS",
    "WEIGHT_FORMATS",
    "export_encoder",
    "save_weights",
    "weight_format",
]

logger = logging.getLogger(__name__)

WEIGHT_FORMATS: tuple[str, ...] = ("pt", "safetensors")
"""File formats :func:`export_encoder` writes: ``torch.save`` (``.pt``) or safetensors (``.safetensors``: timm's
and the Hugging Face Hub's format, read without pickle)."""

EXPORT_TARGETS: tuple[str, ...] = ("timm", "monai", "swinunetr")
"""Stock networks :func:`export_encoder` writes for."""


# ---------------------------------------------------------------------------------------------- stock networks
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


# ---------------------------------------------------------------------------------------------- files
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
    """Write a state dict atomically (:func:`mfassl.files.atomic_write`) as ``torch.save`` (``fmt="pt"``) or
    safetensors (``fmt="safetensors"``, tensors made contiguous, ``metadata`` strings in the header with
    ``{"format": "pt"}``)."""
    return atomic_write(path, lambda f: _write_weights(state, f, fmt, metadata))


def _write_weights(state: Mapping[str, torch.Tensor], f: IO[bytes], fmt: str,
                   metadata: Mapping[str, str] | None) -> None:
    """Write ``state`` to the open binary file ``f`` as ``torch.save`` (``"pt"``) or safetensors (tensors made
    contiguous, ``metadata`` strings in the header with ``{"format": "pt"}``)."""
    if fmt == "pt":
        torch.save(dict(state), f)
        return
    f.write(safetensors.torch.save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()},
                                   metadata={"format": "pt", **dict(metadata or {})}))


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
    inputs = [] if isinstance(checkpoint, Mapping) else [Path(checkpoint), sidecar_path(Path(checkpoint))]
    guard = OutputGuard(inputs, overwrite=overwrite)
    kind = "a file of python -m mfassl export-encoder"
    guard.check(out, "--out", what="the weights file", kind=kind,
                recognise=lambda p: None if _export_sidecar_reason(sidecar_path(p), p.name) is None else
                "no export-encoder description beside it names it")
    guard.check(sidecar_path(out), "--out", value=out, what="its description",
                recognise=lambda p: _export_sidecar_reason(p, out.name), kind=kind)


# ---------------------------------------------------------------------------------------------- export
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
    if to not in EXPORT_TARGETS:
        raise ValueError(f"--to must be one of {', '.join(EXPORT_TARGETS)}, got {to!r}.")
    fmt = weight_format(out, fmt)
    _check_export_outputs(checkpoint, Path(out), overwrite)
    bb, src = _pretrained_encoder(checkpoint, description)
    kind = f"{bb.spatial_dims}D {type(bb).__name__}"
    swin = sys.modules.get("mfassl.backbones.swin")  # an MFASwin exists only once its module (MONAI) is loaded
    fits = {"timm": isinstance(bb, MFAViT) and bb.spatial_dims == 2,
            "monai": isinstance(bb, MFAViT) and bb.spatial_dims == 3,
            "swinunetr": swin is not None and isinstance(bb, swin.MFASwin)}
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
    header = {"mfassl_target": to, "mfassl_class": cls}
    save_with_sidecar(out, lambda f: _write_weights(state, f, fmt, header), meta, indent=2)
    logger.info("exported %s for %s to %s (%d tensors)", src.source, cls, out, len(state))
    return meta
