"""The network classes the MONAI bundles name with ``_target_``.

They are the core's MFA backbones (``spatial_dims`` is an argument, not a second class), exposed
under the medical package so a bundle reads ``"_target_": "mfassl_medical.networks.MFAViT"``:

- :class:`MFAViT`: 2D timm ViT (ViT-S/16, ViT-B/16 via ``timm_name``) or 3D MONAI ViT with MFA after block ``l``;
- :class:`MFASwin`: MONAI SwinTransformer (the ``SwinUNETR`` encoder) with MFA after a chosen stage; its Swin
  modules are the scriptable subclasses of :mod:`mfassl.backbones.swin_script` (same state dict).

Their plain ``forward(x)`` is the unchanged encoder returning ``(B, C)`` features (MFA is a
training-time block); ``forward_paired`` is the mirror-pair forward used in pretraining.
"""

from mfassl.backbones import MFASwin, MFAViT, create_backbone

__all__ = ["MFAViT", "MFASwin", "create_backbone"]
