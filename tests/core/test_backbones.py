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


@pytest.mark.parametrize("dims", [2, 3])
def test_block_hook_default_is_the_block_itself(dims):
    """``run_block`` is ``blk(x)`` exactly, and a forward without ``block_fn`` equals one whose hook calls ``blk(x)``."""
    net = tiny_vit(dims).eval()
    size = 32 if dims == 2 else 16
    x_l, x_r = torch.randn(2, net.in_chans, *([size] * dims)), torch.randn(2, net.in_chans, *([size] * dims))
    h = net.embed(x_l)
    for i, blk in enumerate(net.blocks):
        assert torch.equal(net.run_block(i, blk, h), blk(h))
        h = blk(h)
    seen = []

    def plain(i, blk, x):
        seen.append(i)
        return blk(x)

    default, hooked = net.forward_paired(x_l, x_r, ramp=0.5), net.forward_paired(x_l, x_r, ramp=0.5, block_fn=plain)
    assert seen == list(range(net.depth))  # every block once, in order, across the MFA layer
    for a, b in zip(default, hooked):
        assert torch.equal(a, b)
    assert torch.equal(net.forward_features(x_l, block_fn=plain), net.forward_features(x_l))


def test_block_hook_decides_how_blocks_run():
    """A hook that skips the blocks after the MFA layer: the paired forward runs what the hook returns."""
    net = tiny_vit().eval()
    x_l, x_r = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    skip_post = lambda i, blk, x: blk(x) if i < net.mfa_layer else x  # noqa: E731
    out = net.forward_paired(x_l, x_r, use_mfa=False, block_fn=skip_post)
    h = net.embed(x_l)
    for blk in net.blocks[: net.mfa_layer]:
        h = blk(h)
    assert torch.allclose(out.out_l, net.norm(h), atol=1e-6)
    assert not torch.allclose(out.out_l, net.forward_paired(x_l, x_r, use_mfa=False).out_l, atol=1e-3)


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_from_tokens_equals_forward_from_images(dims):
    net = tiny_vit(dims).eval()
    size = 32 if dims == 2 else 16
    x_l, x_r = torch.randn(2, net.in_chans, *([size] * dims)), torch.randn(2, net.in_chans, *([size] * dims))
    km = torch.rand(2, (size // 8) ** dims) > 0.3
    assert torch.equal(net.forward_tokens(net.embed(x_l)), net.forward_features(x_l))
    from_tokens = net.forward_paired_tokens(net.embed(x_l), net.embed(x_r), ramp=0.5, key_mask=km)
    for a, b in zip(from_tokens, net.forward_paired(x_l, x_r, ramp=0.5, key_mask=km)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        net.forward_paired_tokens(net.embed(x_l), net.embed(x_r)[:1])


def test_swin_refuses_a_block_hook_and_tokens():
    net = tiny_swin()
    x = torch.randn(1, 1, 64, 64, 64)
    with pytest.raises(NotImplementedError, match="block_fn applies to MFAViT"):
        net.forward_paired(x, x, block_fn=lambda i, blk, h: blk(h))
    with pytest.raises(NotImplementedError, match="from input tokens"):
        net.forward_tokens(net.embed(x))


@pytest.mark.parametrize("dims", [2, 3])
def test_vit_scripts_with_the_block_hook_in_place(dims):
    """TorchScript compiles the plain encoder (what ``ckpt_export`` writes) and runs the blocks as they are."""
    import warnings

    net = tiny_vit(dims).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(net)
    x = torch.randn(2, net.in_chans, *([32 if dims == 2 else 16] * dims))
    with torch.no_grad():
        assert torch.equal(scripted(x), net(x))
