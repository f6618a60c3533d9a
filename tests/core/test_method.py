import math

import pytest
import torch

from mfassl import MFASSL
from mfassl.objectives import OBJECTIVES, random_token_mask
from mfassl.schedules import SymmetrySchedule, cosine_momentum, scaled_lr, warmup_cosine

from helpers import tiny_method


def _train(method, images, steps=8, lr=2e-3):
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        torch.manual_seed(7)  # the same views every step: a fixed batch
        out = method(images, epoch=3.0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.update_teacher(0.9)
        losses.append(out["loss"].item())
    return losses


@pytest.mark.parametrize("objective", ["dino", "mocov3", "mae"])
@pytest.mark.parametrize("dims", [2, 3])
def test_few_steps_lower_the_loss(objective, dims):
    method = tiny_method(objective, dims)
    size = 40 if dims == 2 else 20
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, *([size] * dims), generator=g)
    losses = _train(method, images, steps=8 if dims == 2 else 6)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_swin_mae_under_mfassl_trains():
    method = tiny_method("mae", 3, kind="swin")
    images = torch.rand(2, 1, 40, 40, 40, generator=torch.Generator().manual_seed(2))
    losses = _train(method, images, steps=5, lr=3e-3)
    assert losses[-1] < losses[0]


def test_baseline_and_mfassl_share_all_but_the_mirror_branch():
    a = tiny_method("dino", mirror=True, seed=3)
    b = tiny_method("dino", mirror=False, seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    images = torch.rand(3, 1, 40, 40)
    torch.manual_seed(5)
    views_a = a.views(images)
    torch.manual_seed(5)
    views_b = b.views(images)
    assert all(torch.equal(x, y) for x, y in zip(views_a, views_b))
    torch.manual_seed(5)
    out_a = a(images, epoch=3.0)
    torch.manual_seed(5)
    out_b = b(images, epoch=3.0)
    assert out_a["base"].item() == pytest.approx(out_b["base"].item(), abs=1e-6)
    assert out_b["loss"].item() == pytest.approx(out_b["base"].item(), abs=1e-6)
    assert out_a["loss"].item() > out_a["base"].item()
    # the baseline never touches MFA: no gradient reaches it
    out_b["loss"].backward()
    assert all(p.grad is None for p in b.backbone.mfa.parameters())


def test_total_is_the_published_combination():
    m = tiny_method("mocov3", beta=0.7, lambda_eq=0.3, lambda_mid=2.0, t_sym=4.0)
    torch.manual_seed(1)
    out = m(torch.rand(4, 1, 40, 40), epoch=1.0)
    w = 0.25
    expect = out["base"] + 0.7 * out["mirror"] + w * (0.3 * out["l_eq"] + 2.0 * out["l_mid"])
    assert out["loss"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert out["w"].item() == pytest.approx(w)


@pytest.mark.parametrize("epoch,w,ramp,on", [(0.0, 0.0, 0.0, False), (5.0, 0.5, 0.0, False), (11.99, 1.0, 0.0, False),
                                             (12.0, 1.0, 0.0, True), (17.0, 1.0, 0.5, True), (30.0, 1.0, 1.0, True)])
def test_schedule_values(epoch, w, ramp, on):
    s = SymmetrySchedule()(epoch)
    assert s.w == pytest.approx(w) and s.ramp == pytest.approx(ramp) and s.mfa_on is on


def test_mfa_is_skipped_before_t_mfa():
    m = tiny_method("dino", t_mfa=12.0, t_gate=10.0, t_sym=10.0)
    torch.manual_seed(0)
    before = m(torch.rand(2, 1, 40, 40), epoch=3.0)
    assert before["mfa_on"].item() == 0.0 and before["gate_mean"].item() == 0.0
    before["loss"].backward()
    assert all(p.grad is None for p in m.backbone.mfa.parameters())
    torch.manual_seed(0)
    after = m(torch.rand(2, 1, 40, 40), epoch=17.0)
    assert after["mfa_on"].item() == 1.0 and after["ramp"].item() == pytest.approx(0.5)


def test_lr_and_momentum_schedules():
    peak = scaled_lr(5e-4, 64)
    assert peak == pytest.approx(1.25e-4)
    assert warmup_cosine(0, 100, 10, peak) == 0.0
    assert warmup_cosine(5, 100, 10, peak) == pytest.approx(peak / 2)
    assert warmup_cosine(10, 100, 10, peak, 1e-6) == pytest.approx(peak)
    assert warmup_cosine(55, 100, 10, peak, 0.0) == pytest.approx(peak / 2)
    assert warmup_cosine(100, 100, 10, peak, 1e-6) == pytest.approx(1e-6)
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)


def test_registry_and_published_defaults():
    assert {"dino", "mocov3", "mae"} <= set(OBJECTIVES.names())
    m = MFASSL("mfa_vit", backbone_kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4))
    assert (m.beta, m.lambda_eq, m.lambda_mid, m.axis_jitter) == (1.0, 0.5, 1.0, 0.03)
    assert (m.schedule.t_sym, m.schedule.t_mfa, m.schedule.t_gate) == (10.0, 12.0, 10.0)
    dino = m.objective
    assert dino.loss_fn.center.shape == (1, 65536)
    assert (dino.loss_fn.student_temp, dino.loss_fn.teacher_temp, dino.loss_fn.center_momentum) == (0.1, 0.04, 0.9)
    assert m.views.n_global == 2 and m.views.n_local == 8 and m.teacher_momentum == 0.996
    assert m.views.global_size == (224, 224) and m.views.local_size == (96, 96)


def test_mae_pair_shares_one_mask():
    m = tiny_method("mae")
    mask = random_token_mask(3, 16, 0.75)
    assert (mask.sum(1) == 12).all()
    torch.manual_seed(0)
    res = m.objective.forward_pair(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    assert res.token_mask is not None and res.paired.pre_l.shape == res.paired.pre_r.shape == (2, 4, 32)
