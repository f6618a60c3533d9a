
import pytest
import torch

from mfassl import MirrorFusionAttention


def _mfa(dim=32, heads=4, **kw):
    torch.manual_seed(0)
    return MirrorFusionAttention(dim, num_heads=heads, **kw)


def test_parameter_count_matches_published_formula():
    assert sum(p.numel() for p in MirrorFusionAttention(768).parameters()) == 4 * (768 ** 2 + 768) + 4
    m = MirrorFusionAttention(768)
    assert float(m.a) == pytest.approx(0.5) and float(m.b) == pytest.approx(1.0, abs=1e-6)
    assert float(m.alpha) == pytest.approx(0.1) and float(m.gamma) == pytest.approx(0.1)


def test_zero_alpha_gamma_is_identity():
    m = _mfa(alpha_init=0.0, gamma_init=0.0)
    p_l, p_r = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    z_l, z_r, g_l, g_r = m(p_l, p_r, ramp=1.0)
    assert torch.equal(z_l, p_l) and torch.equal(z_r, p_r)


def test_zero_ramp_leaves_only_difference_term():
    m = _mfa()
    p_l, p_r = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    z_l, z_r, _, _ = m(p_l, p_r, ramp=0.0)
    assert torch.allclose(z_l, p_l + 0.1 * (p_l - p_r), atol=1e-6)
    assert torch.allclose(z_r, p_r + 0.1 * (p_r - p_l), atol=1e-6)


def test_identical_inputs_gate_value():
    m = _mfa(dim=48, heads=4)
    p = torch.randn(3, 7, 48)
    out = m(p, p.clone())
    expected = torch.sigmoid(torch.tensor(0.5 - 1.0 * 48 * 1e-6))
    assert torch.allclose(out.gate_l, expected.expand(3, 7), atol=1e-6)
    assert torch.equal(out.gate_l, out.gate_r)
    assert out.gate_l.shape == (3, 7)


def test_gate_falls_as_halves_differ():
    m = _mfa()
    p = torch.randn(1, 5, 32)
    d = torch.randn(1, 5, 32)
    gates = [m.gate(p, p + s * d).mean().item() for s in (0.0, 0.001, 0.01, 0.1)]
    assert all(a > b for a, b in zip(gates, gates[1:]))


def test_gate_before_ramp_and_ramp_scales_fusion():
    m = _mfa()
    p_l, p_r = torch.randn(1, 6, 32) * 0.001, torch.randn(1, 6, 32) * 0.001
    full = m(p_l, p_r, ramp=1.0)
    half = m(p_l, p_r, ramp=0.5)
    assert torch.equal(full.gate_l, half.gate_l)
    base = p_l + 0.1 * (p_l - p_r)
    assert torch.allclose(half.z_l - base, 0.5 * (full.z_l - base), atol=1e-7)


def test_masked_keys_receive_no_attention():
    m = _mfa(alpha_init=1.0)
    p_l, p_r = torch.randn(2, 8, 32) * 0.01, torch.randn(2, 8, 32) * 0.01  # small differences: open gates
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 3] = False
    w = m.attention_weights(p_l, p_r, mask)
    assert torch.all(w[..., 3] == 0) and torch.allclose(w.sum(-1), torch.ones(2, 4, 8))
    # changing a masked key changes no other token's fused output
    p_r2 = p_r.clone()
    p_r2[:, 3] += 1.0
    a = m(p_l, p_r, key_mask=mask).z_l
    b = m(p_l, p_r2, key_mask=mask).z_l
    keep = [i for i in range(8) if i != 3]
    assert torch.allclose(a[:, keep], b[:, keep], atol=1e-6)
    # without the mask it would change them
    c = m(p_l, p_r2).z_l
    assert (a[:, keep] - c[:, keep]).abs().max() > 1e-3


def test_row_without_valid_keys_gets_no_attention_term():
    m = _mfa(alpha_init=1.0)
    p_l, p_r = torch.randn(1, 4, 32) * 1e-4, torch.randn(1, 4, 32) * 1e-4
    out = m(p_l, p_r, key_mask=torch.zeros(1, 4, dtype=torch.bool))
    assert torch.isfinite(out.z_l).all()
    assert torch.allclose(out.z_l, p_l + 0.1 * (p_l - p_r), atol=1e-8)


def test_every_parameter_gets_gradient():
    m = _mfa()
    p_l = torch.randn(2, 6, 32, requires_grad=True) * 0.01
    p_r = torch.randn(2, 6, 32) * 0.01
    out = m(p_l, p_r, ramp=0.7)
    (out.z_l.pow(2).sum() + out.z_r.pow(2).sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_shapes_raise():
    m = _mfa()
    with pytest.raises(ValueError, match="p_l and p_r"):
        m(torch.randn(1, 4, 32), torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="key_mask"):
        m(torch.randn(1, 4, 32), torch.randn(1, 4, 32), key_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        MirrorFusionAttention(30, num_heads=4)
