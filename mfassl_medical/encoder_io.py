"""The pretrained encoder as a file, for the bundles' JSON: a thin layer over :mod:`mfassl.encoder_files`.

``models/model.pt`` is the student encoder's state dict (the bundle's ``network_def``, MFA block included,
keys relative to it, no aliased duplicates) with its description in ``models/model.json``, written atomically
at the end of a run by :func:`save_encoder`. :func:`load_encoder` also takes a training checkpoint
(``checkpoint_<iteration>.pt``) and picks the student encoder out of it, so evaluation can run on any saved
iteration. Both are :mod:`mfassl.encoder_files`'s; this module only keeps the names the bundle configs use
(``$encoder_io.load_encoder(@network_def, @model_file)`` returns the network, loaded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from mfassl.encoder_files import ENCODER_PREFIXES, EncoderLoadError, save_encoder
from mfassl.encoder_files import load_encoder as _load_encoder

__all__ = ["ENCODER_KEY_PREFIXES", "EncoderLoadError", "save_encoder", "load_encoder"]

ENCODER_KEY_PREFIXES: tuple[str, ...] = ENCODER_PREFIXES
"""The one prefix list of :mod:`mfassl.encoder_files` (kept under its former name)."""


def load_encoder(network: nn.Module, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                 strict: bool = True) -> nn.Module:
    """Load pretrained encoder weights into ``network`` and return it (for ``$...`` expressions in bundle JSON).

    Args:
        network: the encoder, built with the sizes it was pretrained with.
        checkpoint: ``models/model.pt``, a training checkpoint ``checkpoint_<iteration>.pt``, or a state dict.
        strict: refuse keys or shapes that differ (False loads what matches and logs the rest).

    Raises:
        EncoderLoadError (a ``RuntimeError``; ``FileNotFoundError`` too for a missing file): the message names
            the file and the keys that do not fit.
    """
    _load_encoder(network, checkpoint, strict=strict)
    return network
