"""The one private timm method MFAViT relies on (``VisionTransformer._pos_embed``), checked loudly.

``pyproject.toml`` pins timm to the release line these tests pass on; a timm release that removes the method,
changes its signature or its result fails here, before a training run goes wrong.
"""

from __future__ import annotations

import inspect

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from mfassl.backbones import MFAViT

WHY = (f"timm {timm.__version__}: MFAViT.embed calls VisionTransformer._pos_embed(x) on the (B, H, W, C) patch "
       "embedding; adapt mfassl/backbones/vit.py and the timm pin in pyproject.toml")


def tiny_timm_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, in_chans=1, num_classes=0, embed_dim=32, depth=2,
                             num_heads=4, qkv_bias=True, dynamic_img_size=True).eval()


def test_pos_embed_exists_with_its_signature():
    method = getattr(VisionTransformer, "_pos_embed", None)
    assert callable(method), f"VisionTransformer._pos_embed is gone. {WHY}."
    params = list(inspect.signature(method).parameters)
    assert params == ["self", "x"], f"VisionTransformer._pos_embed now takes {params}. {WHY}."


@pytest.mark.parametrize("size", [(32, 32), (48, 40)])
def test_pos_embed_adds_class_token_and_resampled_positions(size):
    enc = tiny_timm_vit()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        patches = enc.patch_embed(x)  # (B, H, W, C) with dynamic_img_size
        out = enc._pos_embed(patches)
        grid = (size[0] // 8, size[1] // 8)
        assert patches.shape == (2, *grid, 32), WHY
        pos = resample_abs_pos_embed(enc.pos_embed, new_size=grid, old_size=(4, 4), num_prefix_tokens=1)
        tokens = torch.cat([enc.cls_token.expand(2, -1, -1), patches.reshape(2, -1, 32)], dim=1)
        expected = tokens + pos
    assert out.shape == (2, 1 + grid[0] * grid[1], 32), WHY
    assert torch.allclose(out, expected, atol=1e-6), WHY
    if size == (32, 32):  # the nominal grid uses the stored embedding as it is
        assert torch.allclose(out, tokens + enc.pos_embed, atol=1e-6), WHY


@pytest.mark.parametrize("size", [(32, 32), (48, 40)])
def test_mfavit_features_equal_timm_forward_features(size):
    torch.manual_seed(0)
    net = MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=3, num_heads=4).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        ours, timms = net.forward_features(x), net.encoder.forward_features(x)
    assert ours.shape == (2, 1 + (size[0] // 8) * (size[1] // 8), 32)
    assert torch.allclose(ours, timms, atol=1e-5), WHY
