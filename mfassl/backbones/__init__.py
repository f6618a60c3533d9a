"""MFA backbones and their registry.

``create_backbone(name, **kwargs)`` builds one by name; the names are:

- ``mfa_vit``: :class:`MFAViT` with explicit sizes (2D timm / 3D MONAI, ``spatial_dims``);
- ``mfa_vit_tiny``, ``mfa_vit_small``, ``mfa_vit_base``: the ViT-Ti/S/B/16 sizes (``vit_small_patch16_224``
  and ``vit_base_patch16_224`` are the published ones); any keyword overrides the preset;
- ``mfa_swin``: :class:`MFASwin` (MONAI SwinTransformer, SwinUNETR's encoder layout).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from mfassl.backbones.base import BlockFn, MFABackbone, PairedOutput, default_mfa_layer
from mfassl.backbones.swin import MFASwin
from mfassl.backbones.vit import MFAViT
from mfassl.registry import Registry

__all__ = ["MFABackbone", "PairedOutput", "BlockFn", "MFAViT", "MFASwin", "BACKBONES", "create_backbone",
           "default_mfa_layer"]

BACKBONES: Registry[MFABackbone] = Registry("backbone")

_VIT_PRESETS = {
    "mfa_vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16),
    "mfa_vit_small": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "mfa_vit_base": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
}


def _preset(preset: dict, **kwargs: Any) -> MFAViT:
    return MFAViT(**{**preset, **kwargs})


BACKBONES.register("mfa_vit", MFAViT)
BACKBONES.register("mfa_swin", MFASwin)
for _name, _cfg in _VIT_PRESETS.items():
    BACKBONES.register(_name, partial(_preset, _cfg))


def create_backbone(name: str, **kwargs: Any) -> MFABackbone:
    """Build a registered backbone (see the module docstring for the names)."""
    return BACKBONES.create(name, **kwargs)
