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


def _mfa_swin(**kwargs: Any) -> MFABackbone:
    """:class:`MFASwin`, its module (MONAI's Swin, seconds to import) loaded at the first build."""
    from mfassl.backbones.swin import MFASwin

    return MFASwin(**kwargs)


def __getattr__(name: str) -> Any:
    """``MFASwin`` on first access (PEP 562), so that a 2D ViT run does not import MONAI."""
    if name == "MFASwin":
        from mfassl.backbones.swin import MFASwin

        return MFASwin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKBONES.register("mfa_vit", MFAViT)
BACKBONES.register("mfa_swin", _mfa_swin)
for _name, _cfg in _VIT_PRESETS.items():
    BACKBONES.register(_name, partial(_preset, _cfg))


def create_backbone(name: str, **kwargs: Any) -> MFABackbone:
    """Build a registered backbone (see the module docstring for the names)."""
    return BACKBONES.create(name, **kwargs)
