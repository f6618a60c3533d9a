"""``MFABackbone.embed``: the input tokens every backbone hands to its first block."""

from __future__ import annotations

import pytest
import torch

from mfassl.backbones import MFABackbone, MFASwin, MFAViT


def make(kind: str, dims: int) -> MFABackbone:
    torch.manual_seed(0)
    if kind == "swin":
        return MFASwin(dims, in_chans=1, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4,
                       mfa_stage=2).eval()
    size = 32 if dims == 2 else 16
    return MFAViT(dims, img_size=size, patch_size=8, in_chans=1, embed_dim=32, depth=3, num_heads=4,
                  mfa_layer=2).eval()


@pytest.mark.parametrize("kind,dims", [("vit", 2), ("vit", 3), ("swin", 2), ("swin", 3)])
def test_embed_is_what_the_layers_before_mfa_start_from(kind, dims):
    net = make(kind, dims)
    size = 32 if kind == "swin" or dims == 2 else 16
    x_l, x_r = torch.randn(2, 1, *([size] * dims)), torch.randn(2, 1, *([size] * dims))
    with torch.no_grad():
        h = net.embed(x_l)
        grid = net.grid_shape(x_l.shape[2:])
        n = grid[0] * grid[1] * (grid[2] if dims == 3 else 1)
        assert h.shape == (2, net.num_prefix_tokens + n, net.embed_dim if kind == "vit" else net.base_dim)
        if kind == "vit":
            for blk in net.blocks[: net.mfa_layer]:
                h = blk(h)
            pre = h[:, net.num_prefix_tokens:]
        else:
            m = h.transpose(1, 2).reshape(2, -1, *grid)
            for stage in range(1, net.mfa_stage + 1):
                m = net.swinViT.stage(stage, m)
            pre = m.flatten(2).transpose(1, 2)
        out = net.forward_paired(x_l, x_r, use_mfa=False)
    assert torch.allclose(out.pre_l, pre, atol=1e-5)


def test_base_class_declares_embed():
    assert "embed" in MFABackbone.__dict__ and MFABackbone.embed.__doc__
    with pytest.raises(NotImplementedError):
        MFABackbone().embed(torch.zeros(1, 1, 8, 8))
