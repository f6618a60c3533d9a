"""The scriptable Swin modules: same state dict and outputs as MONAI's, and an MFA-Swin that TorchScript compiles."""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import SwinTransformer, WindowAttention, compute_mask

from mfassl.backbones import MFASwin
from mfassl.backbones.swin_script import (
    ScriptableSwinTransformer,
    ScriptableWindowAttention,
    make_swin_scriptable,
    shifted_window_mask,
)
from mfassl.mfa import MirrorFusionAttention

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4)


def _stock_swin(dims: int, downsample: str = "merging", depths=(2, 1, 1, 1), use_v2: bool = False) -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(in_chans=2, embed_dim=12, window_size=(4,) * dims, patch_size=(2,) * dims, depths=depths,
                           num_heads=(1, 2, 3, 4), spatial_dims=dims, downsample=downsample, use_v2=use_v2).eval()


class _StockMFASwin(nn.Module):
    """The MFA-Swin module tree before the encoder was made scriptable: MONAI's own Swin modules, MFA, mask token."""

    def __init__(self, in_chans: int, mfa_stage: int, embed_dim: int, depths, num_heads, window_size: int) -> None:
        super().__init__()
        self.swinViT = SwinTransformer(in_chans=in_chans, embed_dim=embed_dim, window_size=(window_size,) * 3,
                                       patch_size=(2,) * 3, depths=depths, num_heads=num_heads, spatial_dims=3)
        self.mask_token = nn.Parameter(torch.randn(1, embed_dim) * 0.02)
        self.mfa = MirrorFusionAttention(embed_dim * 2 ** mfa_stage, num_heads=num_heads[mfa_stage - 1],
                                         a_init=0.5, alpha_init=0.3, gamma_init=0.1)
        self.mfa_stage = mfa_stage

    def forward(self, x):  # MONAI's forward, last stage, mean of its tokens
        return self.swinViT(x, normalize=True)[4].flatten(2).mean(-1)

    def paired(self, x_l, x_r):
        vit, b = self.swinViT, x_l.shape[0]
        stages = [vit.layers1[0], vit.layers2[0], vit.layers3[0], vit.layers4[0]]
        h = vit.pos_drop(vit.patch_embed(torch.cat([x_l, x_r])))
        for stage in stages[:self.mfa_stage]:
            h = stage(h.contiguous())
        pre = h.flatten(2).transpose(1, 2)
        z_l, z_r, g_l, _ = self.mfa(pre[:b], pre[b:], ramp=1.0)
        h = torch.cat([z_l, z_r]).transpose(1, 2).reshape(h.shape)
        for stage in stages[self.mfa_stage:]:
            h = stage(h.contiguous())
        out = vit.proj_out(h, normalize=True).flatten(2).transpose(1, 2)
        return out[:b], out[b:], g_l


@pytest.mark.parametrize("dims,size,downsample", [(3, 40, "merging"), (3, 36, "mergingv2"), (2, 36, "merging"),
                                                  (2, 52, "mergingv2")])
def test_scriptable_swin_reproduces_monai_with_shifts_and_padding(dims, size, downsample):
    """Shifted windows (depth 2), a stage padded to its window (10 -> 12) and odd sizes at patch merging."""
    stock = _stock_swin(dims, downsample)
    ours = make_swin_scriptable(copy.deepcopy(stock))
    assert type(ours) is ScriptableSwinTransformer
    assert list(ours.state_dict()) == list(stock.state_dict())
    x = torch.randn(2, 2, *(size,) * dims, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(stock(x), ours(x)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # fused attention: float rounding
    assert make_swin_scriptable(ours) is ours  # a second call changes nothing


@pytest.mark.parametrize("dims,padded,window,shift", [(3, [8, 8, 8], [4, 4, 4], [2, 2, 2]),
                                                      (3, [12, 8, 4], [4, 4, 4], [2, 2, 0]),
                                                      (2, [12, 8], [4, 4], [2, 2]), (2, [6, 4], [3, 4], [1, 0])])
def test_shifted_window_mask_is_monais_partition(dims, padded, window, shift):
    ours = shifted_window_mask(padded, window, shift, torch.device("cpu"))
    torch.testing.assert_close(ours, compute_mask(padded, window, shift, torch.device("cpu")), rtol=0, atol=0)
    assert (ours != 0).any()  # the shift does split windows


@pytest.mark.parametrize("dims, shifted", [(2, False), (2, True), (3, False), (3, True)])
def test_fused_window_attention_matches_the_explicit_path(dims, shifted):
    """forward (scaled_dot_product_attention, bias and mask as its additive mask) against logits + softmax + mix:
    the same output and the same gradients, for the position-bias table as for the weights and the input."""
    torch.manual_seed(0)
    window = (4,) * dims
    attn = WindowAttention(dim=12, num_heads=3, window_size=window, qkv_bias=True)
    attn.__class__ = ScriptableWindowAttention
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 1.0)  # a bias that matters (MONAI starts it near 0)
    n, batch = 4**dims, 2
    n_windows = 4 if shifted else 1
    x = torch.randn(batch * n_windows, n, 12, requires_grad=True)
    mask = None
    if shifted:
        padded = [8, 8] + [4] * (dims - 2)  # 2 x 2 windows
        mask = shifted_window_mask(padded, list(window), [2] * dims, torch.device("cpu"))
        assert mask.shape == (n_windows, n, n) and (mask != 0).any()
    weight = torch.linspace(-1, 1, batch * n_windows * n * 12).view(batch * n_windows, n, 12)

    def run(fn):
        out = fn()
        grads = torch.autograd.grad((out * weight).sum(), [x, attn.relative_position_bias_table, attn.qkv.weight])
        return out.detach(), grads

    fused, fused_grads = run(lambda: attn(x, mask))
    explicit, explicit_grads = run(lambda: attn.mix(attn.softmax(attn.logits(x, mask)[0]), attn.logits(x, mask)[1]))
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5)
    for a, b in zip(fused_grads, explicit_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert float(fused_grads[1].abs().sum()) > 0  # the position bias is trained through the fused kernel
    with torch.no_grad():  # the teacher's / inference path
        torch.testing.assert_close(attn(x, mask), explicit, rtol=0, atol=1e-5)


def test_probe_attention_runs_on_a_stock_monai_window_attention():
    """window_attention_forward reuses the explicit logits/mix on MONAI's own module, not only on the subclass."""
    from mfassl.backbones.swin_attention import window_attention_forward

    torch.manual_seed(0)
    stock = WindowAttention(dim=12, num_heads=3, window_size=(4, 4), qkv_bias=True).eval()
    x = torch.randn(4, 16, 12)
    mask = shifted_window_mask([8, 8], [4, 4], [2, 2], torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(window_attention_forward(stock, x, mask), stock(x, mask), rtol=0, atol=1e-6)


def test_state_dict_of_the_stock_module_tree_loads_strict_with_the_same_outputs():
    """A state dict saved from the MONAI-module MFA-Swin loads strict; forward and the MFA-on paired forward agree."""
    torch.manual_seed(0)
    old = _StockMFASwin(4, mfa_stage=2, **TINY).eval()
    new = MFASwin(3, in_chans=4, mfa_stage=2, **TINY).eval()
    assert list(new.state_dict()) == list(old.state_dict())
    new.load_state_dict(old.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(2)
    x, x_l, x_r = (torch.randn(2, 4, 32, 32, 32, generator=gen) for _ in range(3))
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), rtol=1e-5, atol=1e-5)
        out = new.forward_paired(x_l, x_r, ramp=1.0, use_mfa=True)
        ref_l, ref_r, ref_gate = old.paired(x_l, x_r)
    torch.testing.assert_close(out.out_l, ref_l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.out_r, ref_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.gate_l, ref_gate, rtol=1e-5, atol=1e-5)
    assert float(out.gate_l.mean()) > 0.0  # MFA is on and changes the tokens
    assert not torch.allclose(out.out_l, new.forward_features(x_l))


def test_mfa_swin_scripts_and_the_scripted_module_reproduces_it():
    torch.manual_seed(0)
    net = MFASwin(3, in_chans=4, mfa_stage=2, drop_path_rate=0.1, **TINY).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(net)
    x = torch.randn(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(scripted(x), ref, rtol=0, atol=1e-5)
    assert ref.shape == (2, 16 * 12) and ref.abs().sum() > 0
    with pytest.raises(torch.jit.Error, match="expected 4 input channels"):
        scripted(torch.randn(1, 2, 32, 32, 32))


def test_token_mask_replaces_the_hidden_patches():
    torch.manual_seed(0)
    net = MFASwin(3, in_chans=4, **TINY).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    mask = torch.zeros(1, 16 ** 3, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x, mask), net.forward_features(x))
        mask[0, :100] = True
        assert not torch.allclose(net.forward_features(x, mask), net.forward_features(x))
    with pytest.raises(ValueError, match=r"\[16, 16, 16\] patch grid"):
        net.forward_features(x, mask[:, :10])


def test_unsupported_options_are_refused_and_a_bad_stage_named():
    torch.manual_seed(0)
    ckpt = SwinTransformer(in_chans=1, embed_dim=12, window_size=(4, 4), patch_size=(2, 2), depths=(1, 1, 1, 1),
                           num_heads=(1, 2, 3, 4), spatial_dims=2, use_checkpoint=True)
    with pytest.raises(ValueError, match="use_checkpoint=True"):
        make_swin_scriptable(ckpt)
    ours = make_swin_scriptable(_stock_swin(2))
    with pytest.raises(ValueError, match=r"stage must lie in \[1, 4\], got 5"):
        ours.stage(5, torch.zeros(1, 12, 8, 8))


def test_segmentation_bundle_swin_gives_the_same_outputs():
    """The segmentation bundle keeps its own scriptable Swin (it cannot import mfassl); both agree on one weight set."""
    path = ROOT / "bundles" / "mfassl_brats_segmentation" / "scripts" / "networks.py"
    spec = importlib.util.spec_from_file_location("_seg_bundle_networks", path)
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    stock = _stock_swin(3, "mergingv2")
    ours, theirs = make_swin_scriptable(copy.deepcopy(stock)), bundle.make_swin_scriptable(copy.deepcopy(stock))
    x = torch.randn(1, 2, 40, 40, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
