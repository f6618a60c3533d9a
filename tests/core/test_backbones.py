import pytest
import torch

from mfassl.backbones import BACKBONES, MFASwin, MFAViT, create_backbone


def tiny_vit(dims=2):
    torch.manual_seed(0)
    if dims == 2:
        return MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=4, num_heads=4, mfa_layer=2)
    return MFAViT(3, img_size=16, patch_size=8, in_chans=2, embed_dim=32, depth=3, num_heads=4)


def tiny_swin(dims=3):
    torch.manual_seed(0)
    return MFASwin(dims, in_chans=1, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4, mfa_stage=2)


@pytest.mark.parametrize("dims", [2, 3])
def test_vit_paired_forward_token_counts_and_layer(dims):
    net = tiny_vit(dims)
    size = 32 if dims == 2 else 16
    x_l, x_r = torch.randn(2, net.in_chans, *([size] * dims)), torch.randn(2, net.in_chans, *([size] * dims))
    out = net.forward_paired(x_l, x_r)
    n = (size // 8) ** dims
    assert out.pre_l.shape == (2, n, 32) and out.out_l.shape == (2, n + 1, 32) and out.gate_l.shape == (2, n)
    # pre-fusion tokens are exactly the plain encoder's tokens after block l
    h = net.embed(x_l)
    for blk in net.blocks[: net.mfa_layer]:
        h = blk(h)
    assert torch.allclose(out.pre_l, h[:, 1:], atol=1e-5)
    assert net.mfa_layer == (2 if dims == 2 else 2)


def test_default_layer_is_8_of_12():
    assert create_backbone("mfa_vit_small", in_chans=1).mfa_layer == 8


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin])
def test_mfa_skipped_equals_plain_encoder(make):
    net = make()
    net.eval()
    size = 32 if isinstance(net, MFAViT) else 64
    x_l, x_r = torch.randn(1, net.in_chans, *([size] * net.spatial_dims)), torch.randn(1, net.in_chans, *([size] * net.spatial_dims))
    out = net.forward_paired(x_l, x_r, use_mfa=False)
    assert out.gate_l is None
    assert torch.allclose(out.out_l, net.forward_features(x_l), atol=1e-5)
    assert torch.allclose(out.out_r, net.forward_features(x_r), atol=1e-5)
    fused = net.forward_paired(x_l, x_r, use_mfa=True)
    assert not torch.allclose(fused.out_l, out.out_l, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin])
def test_gradients_reach_mfa(make):
    net = make()
    size = 32 if isinstance(net, MFAViT) else 64
    shape = (2, net.in_chans, *([size] * net.spatial_dims))
    out = net.forward_paired(torch.randn(shape), torch.randn(shape), ramp=1.0)
    (out.out_l.pow(2).mean() + out.out_r.pow(2).mean()).backward()
    for name, p in net.mfa.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_swin_shapes_and_swinunetr_keys():
    net = tiny_swin()
    x = torch.randn(1, 1, 64, 64, 64)
    out = net.forward_paired(x, x.flip(2))
    assert out.pre_l.shape == (1, 8 ** 3, 48) and out.gate_l.shape == (1, 512)
    assert net(x).shape == (1, 192)
    from monai.networks.nets import SwinUNETR

    seg = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                    window_size=4)
    enc = {k: v for k, v in net.state_dict().items() if k.startswith("swinViT.")}
    missing, unexpected = seg.load_state_dict(enc, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("swinViT.")]


def test_token_masking_drop_and_key_mask():
    net = tiny_vit()
    x = torch.randn(2, 1, 32, 32)
    tm = torch.zeros(2, 16, dtype=torch.bool)
    tm[0, :8], tm[1, 8:] = True, True
    out = net.forward_paired(x, x, token_mask=tm, key_mask=torch.ones(2, 16, dtype=torch.bool))
    assert out.pre_l.shape == (2, 8, 32)
    with pytest.raises(ValueError, match="same number"):
        bad = tm.clone()
        bad[0, 0] = False
        net.forward_features(x, token_mask=bad)


def test_full_size_configs():
    base = create_backbone("mfa_vit_base", in_chans=3)
    n_mfa = sum(p.numel() for p in base.mfa.parameters())
    n_enc = sum(p.numel() for p in base.encoder_parameters())
    assert n_mfa == 4 * (768 ** 2 + 768) + 4
    assert 0.026 < n_mfa / n_enc < 0.029
    small = create_backbone("mfa_vit_small", in_chans=1)
    with torch.no_grad():
        out = small.forward_paired(torch.randn(1, 1, 224, 224), torch.randn(1, 1, 224, 224))
    assert out.pre_l.shape == (1, 196, 384) and out.out_l.shape == (1, 197, 384)
    assert "mfa_vit" in BACKBONES and "mfa_swin" in BACKBONES


def test_bad_input_raises():
    net = tiny_vit()
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="spatial_dims"):
        MFAViT(4)
    with pytest.raises(KeyError, match="unknown backbone"):
        create_backbone("nope")
