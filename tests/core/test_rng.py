"""mfassl.rng: the same draws as torch's, the generator keyword passed only when a generator is given."""

from __future__ import annotations

import torch

from mfassl.rng import rand, randn


def test_draws_equal_torchs_with_and_without_a_generator():
    torch.manual_seed(5)
    want = torch.rand(3, 4)
    torch.manual_seed(5)
    assert torch.equal(rand(3, 4), want)
    g = torch.Generator().manual_seed(7)
    want = torch.randn(torch.Size([2, 5]), generator=g, dtype=torch.float64)
    g.manual_seed(7)
    got = randn(torch.Size([2, 5]), generator=g, dtype=torch.float64)
    assert torch.equal(got, want) and got.dtype == torch.float64
