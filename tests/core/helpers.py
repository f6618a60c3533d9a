"""Tiny models and methods shared by the core tests."""

from __future__ import annotations

import torch

from mfassl.backbones import MFASwin, MFAViT
from mfassl.method import MFASSL

OBJECTIVE_KWARGS = {
    "dino": dict(out_dim=128, hidden_dim=64, bottleneck_dim=32),
    "mocov3": dict(proj_hidden_dim=64, out_dim=32, pred_hidden_dim=64),
    "mae": dict(decoder_dim=48, decoder_heads=4, decoder_depth=1),
}


def tiny_backbone(dims: int = 2, kind: str = "vit", in_chans: int = 1):
    if kind == "swin":
        return MFASwin(dims, in_chans=in_chans, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                       window_size=4, mfa_stage=2)
    if dims == 2:
        return MFAViT(2, img_size=32, patch_size=8, in_chans=in_chans, embed_dim=32, depth=3, num_heads=4)
    return MFAViT(3, img_size=16, patch_size=8, in_chans=in_chans, embed_dim=32, depth=2, num_heads=4)


def tiny_method(objective: str = "dino", dims: int = 2, mirror: bool = True, kind: str = "vit", seed: int = 0,
                **kwargs) -> MFASSL:
    torch.manual_seed(seed)
    size = 32 if (dims == 2 or kind == "swin") else 16
    if kind == "swin" and dims == 3:
        size = 32
    views = dict(global_size=size, local_size=size // 2, n_local=2 if objective == "dino" else 0)
    kw = dict(t_sym=1.0, t_mfa=0.0, t_gate=1.0)
    kw.update(kwargs)
    return MFASSL(tiny_backbone(dims, kind), objective, OBJECTIVE_KWARGS.get(objective, {}), mirror=mirror,
                  views=views, **kw)
