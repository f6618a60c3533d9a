"""The faster training-step code computes the same numbers as the straightforward forms it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mfassl.backbones import MFAViT
from mfassl.engine import create_optimizer
from mfassl.method import MFASSL
from mfassl.objectives import DINOLoss
from mfassl.objectives.heads import NormalizedLinear


def _pairwise_dino_loss(center, teacher, student, t_temp=0.04, s_temp=0.1):
    """The per-pair loop: mean over ``i != j`` of ``mean_b -sum_k q_i log p_j``."""
    total, terms = 0.0, 0
    for i, t in enumerate(teacher):
        q = F.softmax((t - center) / t_temp, dim=-1)
        for j, s in enumerate(student):
            if i != j:
                total = total + (-(q * F.log_softmax(s / s_temp, dim=-1)).sum(-1)).mean()
                terms += 1
    return total / terms


@pytest.mark.parametrize("n_t,n_s", [(2, 10), (2, 2), (1, 3)])
def test_dino_loss_matches_pairwise_form(n_t, n_s):
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(4, 512, generator=g) for _ in range(n_t)]
    student = [torch.randn(4, 512, generator=g, requires_grad=True) for _ in range(n_s)]
    loss_fn = DINOLoss(512)
    loss_fn.center.copy_(torch.randn(1, 512, generator=g) * 0.1)
    ref = _pairwise_dino_loss(loss_fn.center.clone(), teacher, student)
    ref_grads = [torch.zeros_like(s) if g is None else g  # n_t = 1: student view 0 meets no teacher
                 for s, g in zip(student, torch.autograd.grad(ref, student, allow_unused=True))]
    got = loss_fn(teacher, student)
    got_grads = torch.autograd.grad(got, student)
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    # stacked (V, B, K) input is the same as a list
    stacked, plain = DINOLoss(512), DINOLoss(512)
    assert float(stacked(torch.stack(teacher), torch.stack(student))) == pytest.approx(
        float(plain(teacher, student)), rel=1e-7)
    torch.testing.assert_close(stacked.center, plain.center)


def test_normalized_linear_matches_normalised_weight():
    torch.manual_seed(0)
    layer = NormalizedLinear(32, 300)
    x = torch.randn(6, 32, requires_grad=True)
    ref = F.linear(x, F.normalize(layer.weight, dim=1))
    got = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)  # float32 rounding of two orders of the same product
    g_ref = torch.autograd.grad(ref.square().sum(), [x, layer.weight])
    g_got = torch.autograd.grad(layer(x).square().sum(), [x, layer.weight])
    for a, b in zip(g_got, g_ref):  # the weight gradient is a projection (cancellation): compare to its scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


# losses of three seeded steps (loss, base, mirror) measured with the per-pair DINO loss, the per-call
# weight normalisation and the per-parameter teacher update
PINNED = {
    False: [(1.8811884, 1.8811884, 0.0), (0.6203084, 0.6203084, 0.0), (0.1983567, 0.1983567, 0.0)],
    True: [(3.9455426, 1.8811884, 1.8036859), (1.4174913, 0.5750463, 0.591876), (0.6338473, 0.195018, 0.1974777)],
}


@pytest.mark.parametrize("mirror", [False, True])
def test_dino_steps_match_pinned_losses(mirror):
    torch.manual_seed(0)
    net = MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=4, num_heads=2)
    method = MFASSL(net, "dino", dict(out_dim=256, hidden_dim=64, bottleneck_dim=32), mirror=mirror,
                    t_sym=0.0, t_mfa=0.0, t_gate=0.0, views=dict(global_size=32, local_size=16, n_local=2))
    opt = create_optimizer(method)
    x = torch.rand(4, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    for s, want in enumerate(PINNED[mirror]):
        torch.manual_seed(2 + s)
        out = method(x, epoch=1.0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.update_teacher(0.9)
        got = (float(out["loss"]), float(out["base"]), float(out["mirror"]))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
