"""Options beyond the published method: the MFA gate distance, E-SSL flip prediction, the views' flip probability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfassl import MFASSL, MirrorFusionAttention
from mfassl.backbones import MFAViT
from mfassl.views import MultiCropViews

ROOT = Path(__file__).resolve().parents[2]


def tiny_vit(**mfa) -> MFAViT:
    return MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=4, **mfa)


def test_gate_mean_is_the_sum_divided_by_the_channel_count():
    torch.manual_seed(0)
    p_l, p_r = torch.randn(2, 5, 48, dtype=torch.float64), torch.randn(2, 5, 48, dtype=torch.float64)
    summed, mean = MirrorFusionAttention(48, 4).double(), MirrorFusionAttention(48, 4, gate_distance="mean").double()
    mean.load_state_dict(summed.state_dict())  # the option adds no parameter
    a, b = float(summed.a), float(summed.b)
    dist_sum = (a - torch.logit(summed.gate(p_l, p_r))) / b
    dist_mean = (a - torch.logit(mean.gate(p_l, p_r))) / b
    assert torch.allclose(dist_mean, dist_sum / 48, rtol=1e-9, atol=1e-12)
    assert torch.allclose(dist_sum, torch.sqrt((p_l - p_r) ** 2 + 1e-12).sum(-1), rtol=1e-9)
    # at a real width the published gate is shut, the mean gate is not
    x, y = torch.randn(1, 196, 384), torch.randn(1, 196, 384)
    assert float(MirrorFusionAttention(384, 6).gate(x, y).max()) < 1e-30
    assert 0.2 < float(MirrorFusionAttention(384, 6, gate_distance="mean").gate(x, y).mean()) < 0.5
    assert "gate_distance='mean'" in repr(mean)
    with pytest.raises(ValueError, match="'median'"):
        MirrorFusionAttention(48, 4, gate_distance="median")


def test_gate_distance_reaches_the_backbone_mfa():
    assert tiny_vit(gate_distance="mean").mfa.gate_distance == "mean"
    assert tiny_vit().mfa.gate_distance == "sum"


def test_views_record_which_views_were_flipped():
    img = torch.zeros(3, 1, 32, 32)
    img[..., :16] = 1.0  # bright left half: a flipped view has it on the right
    torch.manual_seed(0)
    views = MultiCropViews(n_global=2, n_local=1, global_size=32, local_size=16, global_scale=(1.0, 1.0),
                           local_scale=(0.9, 1.0), flip_prob="0.5", brightness=0.0, contrast=0.0)
    assert views.flip_prob == 0.5  # a command-line string is parsed
    out = views(img)
    assert len(views.last_flips) == 3 and all(f.shape == (3,) and f.dtype == torch.bool for f in views.last_flips)
    flips = torch.cat(views.last_flips)
    bright_right = torch.cat([(v[..., v.shape[-1] // 2:].mean((1, 2, 3)) > v[..., : v.shape[-1] // 2].mean((1, 2, 3)))
                              for v in out])
    assert torch.equal(flips, bright_right) and 0 < int(flips.sum()) < len(flips)
    none = MultiCropViews(n_global=2, n_local=0, global_size=32, flip_prob=0.0)
    none(img)
    assert not torch.cat(none.last_flips).any()
    with pytest.raises(ValueError, match="flip_prob"):
        MultiCropViews(flip_prob=1.5)


def _method(flip_prediction=None, mirror=True, **views):
    torch.manual_seed(0)
    kw = {} if flip_prediction is None else {"flip_prediction": flip_prediction}
    return MFASSL(tiny_vit(), "mocov3", dict(proj_hidden_dim=32, out_dim=16, pred_hidden_dim=32), mirror=mirror,
                  views=dict(global_size=32, local_size=16, n_local=0, **views), t_sym=1.0, t_mfa=0.0, t_gate=1.0, **kw)


def test_zero_flip_prediction_is_exactly_the_method_without_it():
    images = torch.rand(4, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    outs = []
    for fp in (None, 0.0, "0"):  # default, explicit zero, and a command-line string
        m = _method(fp)
        assert m.flip_head is None
        torch.manual_seed(3)
        outs.append(m(images, epoch=2.0))
    assert set(outs[0]) == set(outs[1]) == set(outs[2]) and "flip_loss" not in outs[0]
    assert float(outs[0]["loss"]) == float(outs[1]["loss"]) == float(outs[2]["loss"])


def test_flip_head_learns_to_predict_the_flip_on_a_learnable_toy():
    """Images with a bright left half: whether a view was flipped is visible, so the flip loss must fall."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    images = 0.3 * torch.rand(8, 1, 40, 40, generator=g)
    images[..., :20] += 0.7
    m = _method("4.0", mirror=False, flip_prob=0.5)
    assert m.flip_prediction == 4.0 and m.flip_head is not None
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses, accs = [], []
    for step in range(40):
        torch.manual_seed(100 + step)
        out = m(images, epoch=2.0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.update_teacher(0.99)
        losses.append(float(out["flip_loss"]))
        accs.append(float(out["flip_acc"]))
        assert float(out["loss"]) == pytest.approx(float(out["base"]) + 4.0 * float(out["flip_loss"]), rel=1e-5)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first
    assert sum(accs[-10:]) / 10 > 0.75


OBJECTIVE_HEADS = {"dino": dict(out_dim=64, hidden_dim=32, bottleneck_dim=16),
                   "mocov3": dict(proj_hidden_dim=32, out_dim=16, pred_hidden_dim=32), "mae": {}}


@pytest.mark.parametrize("objective, extra_passes", [("dino", 0), ("mocov3", 0), ("mae", 1)])
def test_flip_head_reads_the_objectives_own_pass_over_the_global_views(objective, extra_passes):
    """DINO and MoCo-v3 hand their pooled global-view features to the flip head (no second encoder pass; the
    same flip loss as encoding the views again); MAE encodes masked views, so the head encodes them itself."""
    images = torch.rand(4, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    n_local = 2 if objective == "dino" else 0
    calls = {}
    for fp in (0.0, 1.0):
        torch.manual_seed(0)
        m = MFASSL(tiny_vit(), objective, OBJECTIVE_HEADS[objective], mirror=False, flip_prediction=fp,
                   views=dict(global_size=32, local_size=16, n_local=n_local, flip_prob=0.5))
        count = []
        hook = m.backbone.register_forward_hook(lambda *_: count.append(1))
        torch.manual_seed(3)
        out = m(images, epoch=2.0)
        hook.remove()
        calls[fp] = len(count)
    assert "global_features" not in out and "base_global_features" not in out
    assert calls[1.0] == calls[0.0] + extra_passes
    torch.manual_seed(3)
    views = m.views(images)
    flips = torch.cat(m.views.last_flips[:2]).float()
    assert 0 < float(flips.sum()) < flips.numel()  # both labels occur
    with torch.no_grad():
        again = torch.nn.functional.binary_cross_entropy_with_logits(m.flip_head(m.backbone(torch.cat(views[:2]))), flips)
    assert float(out["flip_loss"]) == pytest.approx(float(again), rel=1e-5)


def test_flip_prediction_rejects_negative_weights():
    with pytest.raises(ValueError, match="flip_prediction"):
        _method(-1.0)


@pytest.mark.parametrize("bundle", ["mfassl_chexpert_pretrain", "mfassl_brats_pretrain"])
def test_bundle_keys_reach_the_method(bundle):
    """``--gate_distance mean --flip_prediction 0.5 --flip_prob 0`` as a user types them (strings)."""
    from monai.bundle import ConfigParser

    cfg = json.loads((ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
    assert (cfg["gate_distance"], cfg["flip_prediction"], cfg["flip_prob"]) == ("sum", 0.0, 0.5)  # published
    parser = ConfigParser(cfg)
    parser.update({"gate_distance": "mean", "flip_prediction": "0.5", "flip_prob": "0",
                   "network_def#embed_dim": 32, "network_def#depth": 2, "network_def#num_heads": 2,
                   "network_def#mfa_layer": 1, "network_def#img_size": 32 if "chexpert" in bundle else [32, 32, 32],
                   "objective": "mocov3", "objective_args#mocov3": dict(proj_hidden_dim=16, out_dim=8, pred_hidden_dim=16)})
    for k in ("global_size", "local_size", "roi_size"):
        if k in cfg:
            parser[k] = 32 if "chexpert" in bundle else [32, 32, 32]
    method = parser.get_parsed_content("method")
    assert method.backbone.mfa.gate_distance == "mean"
    assert method.flip_prediction == 0.5 and method.flip_head is not None
    assert method.views.flip_prob == 0.0
