import pytest
import torch
import torch.nn.functional as F

from mfassl import ReflectionConsistencyLoss, TokenAlignmentLoss

LOSSES = [ReflectionConsistencyLoss(), TokenAlignmentLoss()]


@pytest.mark.parametrize("loss", LOSSES)
def test_zero_for_identical_and_positive_otherwise(loss):
    p = torch.randn(3, 9, 16)
    assert loss(p, p.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(p, torch.randn(3, 9, 16)).item() > 0.01


def test_values_match_definitions():
    p_l, p_r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    eq = 1 - F.cosine_similarity(p_l.mean(1), p_r.mean(1), dim=-1).mean()
    assert ReflectionConsistencyLoss()(p_l, p_r).item() == pytest.approx(eq.item(), abs=1e-6)
    mid = (F.normalize(p_l, dim=-1) - F.normalize(p_r, dim=-1)).pow(2).sum(-1).mean()
    assert TokenAlignmentLoss()(p_l, p_r).item() == pytest.approx(mid.item(), abs=1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_masked_tokens_do_not_change_the_loss(loss):
    p_l, p_r = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 4:] = False
    a = loss(p_l, p_r, mask)
    p_r2 = p_r.clone()
    p_r2[:, 4:] = torch.randn(2, 2, 8) * 100
    assert loss(p_l, p_r2, mask).item() == pytest.approx(a.item(), abs=1e-6)
    assert loss(p_l[:, :4], p_r[:, :4]).item() == pytest.approx(a.item(), abs=1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_sample_without_valid_tokens_is_left_out(loss):
    p_l, p_r = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1] = False
    assert loss(p_l, p_r, mask).item() == pytest.approx(loss(p_l[:1], p_r[:1]).item(), abs=1e-6)
