"""BraTS segmentation with an MFASSL-pretrained Swin encoder: weight loading and metrics.

The segmentation network is MONAI's ``SwinUNETR``. Its encoder is ``SwinUNETR.swinViT``, the same MONAI
``SwinTransformer`` that :class:`~mfassl.backbones.MFASwin` holds under the same attribute name, so the
encoder part of an MFASSL checkpoint (keys ``objective.backbone.swinViT.*``) loads into it key for key when
``feature_size``/``depths``/``num_heads``/``window_size``/``patch_size`` match the pretraining backbone.

Used by ``bundles/mfassl_brats_segmentation`` (``train.json`` builds the network as
``$mfassl_medical.segmentation.init_from_pretrained(@network_def, @pretrained_checkpoint)``)::

    from monai.networks.nets import SwinUNETR
    net = SwinUNETR(in_channels=4, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    report = load_pretrained_encoder(net, "runs/brats_pretrain/checkpoints/checkpoint_1000.pt")
    print(report.summary())

The train/validation split ``train.json`` names (:func:`~mfassl_medical.data.brats.brats_datalists`) lives with
the BraTS reader and is re-exported here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from monai.handlers import HausdorffDistance, MeanDice, from_engine

from mfassl.encoder_files import ENCODER_PREFIXES as _CORE_PREFIXES
from mfassl.encoder_files import EncoderFileNotFoundError, EncoderLoadError, EncoderLoadReport, read_encoder_file
from mfassl.encoder_files import extract_encoder_state as _extract_encoder_state
from mfassl.encoder_files import load_encoder as _load_encoder
from mfassl.options import as_bool
from mfassl_medical.data.brats import brats_datalists

__all__ = [
    "ENCODER_PREFIXES",
    "EncoderLoadError",
    "EncoderLoadReport",
    "extract_encoder_state",
    "load_pretrained_encoder",
    "init_from_pretrained",
    "brats_datalists",
    "region_metrics",
    "regions_to_brats_labels",
    "LABEL_NAMES",
]

logger = logging.getLogger(__name__)

ENCODER_PREFIXES: tuple[str, ...] = tuple(p + "swinViT." for p in _CORE_PREFIXES)
"""Prefixes tried to find the Swin encoder in a state dict: :data:`mfassl.encoder_files.ENCODER_PREFIXES` with
``swinViT.`` appended (an MFASSL checkpoint's ``objective.backbone.swinViT.`` first)."""

LABEL_NAMES: dict[int, str] = {0: "background", 1: "necrotic_core", 2: "edema", 4: "enhancing_tumor"}
"""Values of the label map the bundle's inference writes (BraTS 2021 labels)."""


def _read_state(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The state dict inside a checkpoint file or mapping, and a name for the report
    (:func:`mfassl.encoder_files.read_encoder_file`)."""
    src = read_encoder_file(checkpoint)
    return src.state, src.source


def extract_encoder_state(state: Mapping[str, Any], prefix: str | None = None) -> tuple[dict[str, torch.Tensor], str, int]:
    """The Swin encoder's tensors of ``state`` with the prefix removed.

    Args:
        state: a state dict (MFASSL, objective, MFASwin, SwinUNETR...).
        prefix: the encoder prefix; None tries :data:`ENCODER_PREFIXES` in order and takes the first present.

    Returns:
        ``(encoder state with keys relative to swinViT, prefix, number of other keys)``.

    Raises:
        EncoderLoadError: no key starts with the prefix.
    """
    return _extract_encoder_state(state, prefix, part=None if prefix is not None else "swinViT")


def load_pretrained_encoder(network: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any],
                            strict: bool = True, prefix: str | None = None) -> EncoderLoadReport:
    """Copy MFASSL-pretrained Swin encoder weights into ``network.swinViT`` (a ``SwinUNETR``), through
    :func:`mfassl.encoder_files.load_encoder` with ``part="swinViT"``.

    Args:
        network: a module with a ``swinViT`` attribute (``SwinUNETR``, ``MFASwin``).
        checkpoint: a training checkpoint (``checkpoint_<iter>.pt``, whose ``"model"`` is the MFASSL state dict),
            an encoder file (``models/model.pt`` of the pretraining bundle) or a state dict.
        strict: raise unless every encoder key of the network is in the checkpoint with the same shape and
            the checkpoint's encoder has no extra key. False loads the matching keys and reports the rest.
        prefix: the encoder prefix in the checkpoint (default: found among :data:`ENCODER_PREFIXES`).

    Returns:
        :class:`EncoderLoadReport` (also logged, and kept as ``network.encoder_load_report``).

    Raises:
        EncoderLoadError: the file cannot be read (the message names it), holds no Swin encoder, or
            (``strict``) keys or shapes differ; nothing is copied in that case.
    """
    try:
        return _load_encoder(network, checkpoint, strict=strict, prefix=prefix, part="swinViT")
    except EncoderFileNotFoundError:
        raise
    except EncoderLoadError as err:
        raise EncoderLoadError(f"{err}\n(the pretrained encoder must match the segmentation network's swinViT: "
                               "check feature_size, depths, num_heads, window_size, patch_size, use_v2 against "
                               "the pretraining backbone)") from err


def init_from_pretrained(network: nn.Module, checkpoint: str | os.PathLike | None = None, strict: bool = True,
                         prefix: str | None = None) -> nn.Module:
    """Bundle helper: ``network`` with its encoder loaded from ``checkpoint``; None or ``""`` keeps the random
    initialisation and says so in the log (no silent fallback)."""
    strict = as_bool(strict, "strict_encoder")
    if checkpoint in (None, ""):
        logger.warning("no pretrained_checkpoint given: the SwinUNETR encoder starts from random weights.")
        return network
    load_pretrained_encoder(network, checkpoint, strict=strict, prefix=prefix)
    return network


def _channel(i: int) -> Callable[[Any], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    def pick(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        preds, labels = from_engine(["pred", "label"])(output)
        return [p[i:i + 1] for p in preds], [lab[i:i + 1] for lab in labels]

    return pick


def region_metrics(regions: Sequence[str] = ("TC", "WT", "ET"), hd95: bool = True) -> dict[str, Any]:
    """Per-region MONAI metric handlers for an evaluator's ``additional_metrics``.

    Args:
        regions: channel order of the prediction/label (the bundle's TC, WT, ET).
        hd95: add ``hd95_<region>`` (MONAI ``HausdorffDistance`` at the 95th percentile, voxels).

    Returns:
        ``{"dice_tc": MeanDice, ..., "hd95_tc": HausdorffDistance, ...}`` reading ``pred``/``label``
        (binary, channel-first) of the engine output. Cases whose region is empty in the label give NaN,
        which the mean leaves out (MONAI's ``ignore_empty``).
    """
    out: dict[str, Any] = {}
    for i, r in enumerate(regions):
        out[f"dice_{r.lower()}"] = MeanDice(include_background=True, output_transform=_channel(i))
        if hd95:
            out[f"hd95_{r.lower()}"] = HausdorffDistance(include_background=True, percentile=95.0,
                                                         output_transform=_channel(i))
    return out


def regions_to_brats_labels(regions: torch.Tensor) -> torch.Tensor:
    """Binary ``(3, *S)`` TC/WT/ET channels -> a ``(1, *S)`` BraTS 2021 label map (1 NCR, 2 ED, 4 ET).

    ET wins over TC, TC over WT: ``4`` where ET, else ``1`` where TC, else ``2`` where WT, else ``0``. The
    bundle's ``inference.json`` writes the same expression inline (MONAI Label's venv has no mfassl).
    """
    r = regions > 0.5
    lab = torch.where(r[2:3], 4, torch.where(r[0:1], 1, torch.where(r[1:2], 2, 0)))
    return lab.to(torch.uint8)
