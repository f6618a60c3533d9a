"""DAGMaN: attention-guided masks, the noisy teacher, attention statistics and training on tiny Swins."""

from __future__ import annotations

import math

import pytest
import torch

from mfassl.backbones import MFASwin, MFAViT
from mfassl.method import MFASSL
from mfassl.objectives import OBJECTIVES, create_objective
from mfassl.backbones.swin_attention import SwinAttentionProbe, attention_entropy
from mfassl.objectives.base import patchify, unpatchify
from mfassl.objectives.dagman import DAGMaN, attention_guided_mask, mask_overlap

from helpers import tiny_backbone, train_steps


def tiny_swin(dims: int = 2) -> MFASwin:
    """The shared tiny Swin: width 12, one block per stage, windows of 4, MFA after stage 2 (final stride 32)."""
    return tiny_backbone(dims, "swin")


def test_registered_and_swin_only():
    assert "dagman" in OBJECTIVES
    obj = create_objective("dagman", tiny_swin(), noise_std=0.0)
    assert isinstance(obj, DAGMaN) and obj.momentum == 0.996
    with pytest.raises(ValueError, match="MFASwin"):
        DAGMaN(MFAViT(2, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4))
    with pytest.raises(ValueError, match="mask_ratio"):
        DAGMaN(tiny_swin(), mask_ratio=1.0)
    with pytest.raises(ValueError, match="noise_std"):
        DAGMaN(tiny_swin(), noise_std=-0.1)


def test_guided_mask_is_exactly_the_top_scored_cells():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0, 0.5, 0.2, 0.7, 0.4, 0.6]])
    mask = attention_guided_mask(scores, 0.4)
    assert mask[0].nonzero().flatten().tolist() == [1, 3, 7, 9]  # scores 0.9, 0.8, 0.7, 0.6
    assert float(mask_overlap(mask, scores)) == 1.0
    unpatch = torch.randn(2, 1, 8, 8)
    assert torch.equal(unpatchify(patchify(unpatch, (4, 4)), (4, 4), (2, 2), 1), unpatch)


@pytest.mark.parametrize("guided", [True, False])
def test_forward_hides_the_top_attended_cells_of_a_fixed_teacher_map(guided, monkeypatch):
    obj = DAGMaN(tiny_swin(), mask_ratio=0.25, guided=guided, noise_std=0.0)
    x = torch.randn(2, 1, 32, 32)  # mask grid (32 / 8)^2 = 16 cells, 4 hidden
    fixed = torch.stack([torch.arange(16.0), torch.arange(16.0).flip(0)])
    real = obj.teacher_pass

    def fixed_teacher(x_l, *args, **kwargs):
        tokens, _, _, probe = real(x_l, *args, **kwargs)
        return tokens, fixed, fixed, probe

    seen = {}
    forward_features = obj.backbone.forward_features

    def spy(x, token_mask=None):
        seen["mask"] = token_mask
        return forward_features(x, token_mask=token_mask)

    monkeypatch.setattr(obj, "teacher_pass", fixed_teacher)
    monkeypatch.setattr(obj.backbone, "forward_features", spy)
    obj([x])
    cells = seen["mask"].view(2, 4, 4, 4, 4)[:, :, 0, :, 0].reshape(2, 16)  # 4x4 patches per cell
    assert torch.equal(obj.input_mask(cells, (4, 4)), seen["mask"])
    assert cells.sum(1).tolist() == [4, 4]
    top = [[12, 13, 14, 15], [0, 1, 2, 3]]
    if guided:
        assert [r.nonzero().flatten().tolist() for r in cells] == top
        assert obj.extra_state()["dagman/mask_overlap"] == 1.0
    else:
        draws = [obj.draw_mask(fixed) for _ in range(5)]
        assert all(d.sum(1).tolist() == [4, 4] for d in draws)
        assert not all(torch.equal(d, attention_guided_mask(fixed, 0.25)) for d in draws)


def test_noise_scale_zero_makes_the_teacher_deterministic():
    net = tiny_swin().eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        plain = net.forward_features(x)
        with SwinAttentionProbe(net, noise_std=0.0):
            probed = net.forward_features(x)
    # the probe's explicit softmax reproduces the encoder's fused attention to float rounding
    torch.testing.assert_close(probed, plain, rtol=1e-5, atol=1e-5)
    assert "forward" not in net.swinViT.layers1[0].blocks[0].attn.__dict__  # and is removed on exit

    obj = DAGMaN(net, noise_std=0.0)
    t1, s1, c1, _ = obj.teacher_pass(x)
    t2, s2, c2, _ = obj.teacher_pass(x)
    assert torch.equal(t1, t2) and torch.equal(s1, s2) and torch.equal(s1, c1)

    noisy = DAGMaN(tiny_swin(), noise_std=1.0)
    n1, a1, _, _ = noisy.teacher_pass(x)
    n2, a2, _, _ = noisy.teacher_pass(x)
    assert not torch.allclose(n1, n2) and not torch.allclose(a1, a2)
    g = [torch.Generator().manual_seed(3) for _ in range(2)]
    r1, r2 = (noisy.teacher_pass(x, generator=gen)[0] for gen in g)
    assert torch.equal(r1, r2)  # seeded noise is reproducible


def test_entropy_matches_a_hand_computation():
    probs = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]], [[[0.25, 0.75], [0.5, 0.5]]]])  # (2 windows, 1 head, 2, 2)
    hand = (math.log(2) + 0.0 - (0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2)) / 4
    assert attention_entropy(probs).tolist() == pytest.approx([hand], abs=1e-6)

    # Zero q/k weights and position biases: every window row is uniform, entropy = log(tokens per window).
    obj = DAGMaN(tiny_swin(), noise_std=0.0)
    with torch.no_grad():
        for name, p in obj.teacher.named_parameters():
            if "attn.qkv" in name or "relative_position_bias_table" in name:
                p.zero_()
    obj([torch.randn(2, 1, 32, 32)])  # patch grid 16: stages at 16, 8, 4 (window 4x4) and 2 (window 2x2)
    state = obj.extra_state()
    expected = {1: math.log(16), 2: math.log(16), 3: math.log(16), 4: math.log(4)}
    heads = {1: 1, 2: 2, 3: 3, 4: 4}
    for stage, value in expected.items():
        for h in range(heads[stage]):
            assert state[f"dagman/entropy_s{stage}_h{h}"] == pytest.approx(value, abs=1e-5)


# (dims, image side, steps, bound on the loss ratio, on the reconstruction ratio); 64 px in 2D gives a 2x2
# final grid, so the three distillation terms differ (at 32 px the single final token makes them one number)
FIT_CASES = [(2, 64, 6, 0.6, 0.65), (3, 32, 4, 0.7, 0.75)]


@pytest.mark.parametrize("dims,side,steps,max_loss,max_rec", FIT_CASES)
def test_loss_falls_on_a_fixed_batch(dims, side, steps, max_loss, max_rec):
    torch.manual_seed(0)
    obj = DAGMaN(tiny_swin(dims), noise_std=0.1, mask_ratio=0.5)
    x = torch.randn(2, 1, *([side] * dims))
    # the same images, teacher noise and drop-path every step; measured: the last 2 steps' mean loss is 0.38
    # (2D) and 0.48 (3D) of the first 2 steps', the reconstruction 0.43 and 0.52, each distillation term < 0.3
    fit = train_steps(obj, lambda: obj([x]), steps, lr=2e-3, teacher_momentum=0.99, seed=0)
    assert set(fit.last) == {"loss", "rec", "aitd", "gitd", "ampd"}
    assert fit.ratio(2) < max_loss
    assert fit.ratio(2, "rec") < max_rec
    assert all(fit.ratio(2, k) < 0.5 for k in ("aitd", "gitd", "ampd"))


def test_seed_defaults_three_distillation_terms_and_student_drop_path():
    """seeds/003: lambda_AITD = lambda_GITD = lambda_AMPD = 0.1 and drop-path 0.1 on the student only."""
    from monai.networks.layers import DropPath
    from monai.networks.nets.swin_unetr import SwinTransformerBlock

    torch.manual_seed(0)
    obj = DAGMaN(tiny_swin())
    assert (obj.lambda_rec, obj.lambda_aitd, obj.lambda_gitd, obj.lambda_ampd) == (1.0, 0.1, 0.1, 0.1)
    student = [b.drop_path for b in obj.backbone.modules() if isinstance(b, SwinTransformerBlock)]
    teacher = [b.drop_path for b in obj.teacher[0].modules() if isinstance(b, SwinTransformerBlock)]
    rates = [m.drop_prob if isinstance(m, DropPath) else 0.0 for m in student]
    assert rates == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])  # linear over the 4 blocks
    assert all(isinstance(m, torch.nn.Identity) for m in teacher)
    assert obj.backbone.state_dict().keys() == obj.teacher[0].state_dict().keys()
    out = obj([torch.randn(2, 1, 64, 64)])
    total = out["rec"] + 0.1 * (out["aitd"] + out["gitd"] + out["ampd"])
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-5)
    assert all(0.0 <= float(out[k]) <= 2.0 for k in ("aitd", "gitd", "ampd"))
    # AITD pools with the teacher's score: a one-hot score makes it the distillation of that one token
    p, t = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    w = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    aitd = 1 - torch.nn.functional.cosine_similarity((w[..., None] * p).sum(1), (w[..., None] * t).sum(1))
    assert float(aitd) == pytest.approx(float(1 - torch.nn.functional.cosine_similarity(p[:, 2], t[:, 2])))
    with pytest.raises(ValueError, match="drop_path"):
        DAGMaN(tiny_swin(), drop_path=1.5)
    keep = DAGMaN(tiny_swin(), drop_path=None)  # the backbone's own setting (none here)
    assert not any(isinstance(m, DropPath) for m in keep.backbone.modules())


def test_runs_under_the_mirror_branch_with_one_shared_mask(monkeypatch):
    torch.manual_seed(0)
    method = MFASSL(tiny_swin(), "dagman", dict(noise_std=0.1), mirror=True,
                    views=dict(global_size=32, local_size=16, n_local=0), t_sym=1.0, t_mfa=0.0, t_gate=1.0)
    seen = {}
    paired = method.backbone.forward_paired

    def spy(x_l, x_r, **kwargs):
        seen["mask"] = kwargs.get("token_mask")
        return paired(x_l, x_r, **kwargs)

    monkeypatch.setattr(method.backbone, "forward_paired", spy)
    out = method(torch.randn(2, 1, 40, 40), epoch=2.0)
    out["loss"].backward()
    assert seen["mask"].shape == (2, 256) and int(seen["mask"][0].sum()) == round(0.6 * 16) * 16
    assert float(out["mfa_on"]) == 1.0 and float(out["mirror"]) > 0
    assert "dagman/mask_overlap" in out and "dagman/entropy_s4_h3" in out
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.mfa.parameters())
