import math

import pytest
import torch
import torch.nn.functional as F

from mfassl.geometry import warp
from mfassl.pairing import canonicalize, centre_axes, mirror_pair, mirror_permutation, token_mask


def _symmetric(dims: int, size: int = 33) -> torch.Tensor:
    """A smooth image exactly symmetric about its centre along the split dim (2D: cols, 3D: x)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, *([size] * dims), generator=g)
    k = 3 if dims == 2 else 2  # tensor dim of the split dim
    x = (x + x.flip(k)) / 2
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    x = pool(x, 5, 1, 2, count_include_pad=False)
    x = (x + x.flip(k)) / 2
    # a smooth window so rotated versions stay inside the field of view without hard edges
    coords = torch.meshgrid(*[torch.linspace(-1, 1, size)] * dims, indexing="ij")
    r2 = sum(c ** 2 for c in coords)
    return x * torch.exp(-r2 / 0.15)


@pytest.mark.parametrize("dims", [2, 3])
def test_symmetric_image_gives_equal_halves_at_true_axis(dims):
    x = _symmetric(dims)
    pair = mirror_pair(x, None, mirror_size=16)
    assert torch.allclose(pair.x_l, pair.x_r, atol=1e-5)
    assert pair.x_l.shape == (1, 1, *([16] * dims))


@pytest.mark.parametrize("dims", [2, 3])
def test_axis_five_degrees_off_breaks_equality(dims):
    x = _symmetric(dims)
    shape = x.shape[2:]
    k = 1 if dims == 2 else 0
    other = 0 if dims == 2 else 1
    a = math.radians(5.0)
    row = torch.zeros(1, dims + 1)
    row[0, k], row[0, other] = math.cos(a), math.sin(a)
    c = torch.tensor([(s - 1) / 2 for s in shape])
    row[0, dims] = (row[0, :dims] * c).sum()
    off = mirror_pair(x, row, mirror_size=16)
    exact = mirror_pair(x, None, mirror_size=16)
    err_off = (off.x_l - off.x_r).abs().mean()
    assert err_off > 20 * (exact.x_l - exact.x_r).abs().mean() + 1e-4


@pytest.mark.parametrize("dims", [2, 3])
def test_tilted_axis_equals_upright_pair(dims):
    x = _symmetric(dims)
    shape = x.shape[2:]
    k = 1 if dims == 2 else 0
    other = 0 if dims == 2 else 1
    theta = math.radians(12.0)
    # rotate the image by theta about its centre in the (other, k) plane
    rot = torch.eye(dims + 1)
    rot[other, other], rot[other, k] = math.cos(theta), -math.sin(theta)
    rot[k, other], rot[k, k] = math.sin(theta), math.cos(theta)
    c = torch.tensor([(s - 1) / 2 for s in shape])
    shift = c - rot[:dims, :dims] @ c
    rot[:dims, dims] = shift
    # output y -> input x = R^-1 (y - c) + c : the rotated image
    rotated = warp(x, torch.linalg.inv(rot))
    # the true axis of the rotated image: normal R e_k through the centre
    n = rot[:dims, k]
    row = torch.cat([n, (n * c).sum().view(1)]).view(1, -1)
    tilted = mirror_pair(rotated, row, mirror_size=16)
    upright = mirror_pair(x, None, mirror_size=16)
    scale = upright.x_l.abs().max()
    # two resamplings (rotate, then canonicalise) separate them only by interpolation error
    for a, b in ((tilted.x_l, upright.x_l), (tilted.x_r, upright.x_r), (tilted.x_l, tilted.x_r)):
        assert (a - b).abs().max() < 0.03 * scale
        assert (a - b).abs().mean() < 0.005 * scale


def test_halves_cover_the_right_sides():
    # left half of columns is 0, right half is 1
    x = torch.zeros(1, 1, 8, 10)
    x[..., 5:] = 1.0
    pair = mirror_pair(x, None, mirror_size=(8, 4))
    assert pair.x_l[..., :-1].max() == 0.0 and pair.x_r[..., :-1].min() == 1.0
    assert pair.x_l[..., -1].max() == pytest.approx(0.5)  # the midline column is shared
    # the midline is at the high-index edge of both halves: x_r's first column is the image's last
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 8, 10)
    p = mirror_pair(ramp, None, mirror_size=(8, 5))
    assert p.x_l[0, 0, 0, 0] == pytest.approx(0.0) and p.x_r[0, 0, 0, 0] == pytest.approx(9.0)
    assert p.x_l[0, 0, 0, -1] == pytest.approx(4.5) and p.x_r[0, 0, 0, -1] == pytest.approx(4.5)


def test_jitter_moves_axis_within_bound():
    x = torch.rand(64, 1, 20, 50)
    pair = mirror_pair(x, None, mirror_size=8, jitter=0.03, generator=torch.Generator().manual_seed(0))
    shift = pair.axes[:, 2] - 24.5
    assert shift.abs().max() <= 0.03 * 50 + 1e-5 and shift.std() > 0.3


def test_token_mask_flags_outside_patches():
    x = torch.rand(1, 1, 32, 32)
    row = torch.tensor([[math.sin(math.radians(30)), math.cos(math.radians(30)), 0.0]])
    row[0, 2] = row[0, :2] @ torch.tensor([15.5, 15.5])
    pair = mirror_pair(x, row, mirror_size=32)
    m = token_mask(pair.valid_l, 8)
    assert m.shape == (1, 16) and m.dtype == torch.bool
    assert 0 < m.sum() < 16  # corners of a 30-degree rotated frame fall outside
    full = mirror_pair(x, None, mirror_size=32)
    assert token_mask(full.valid_l, 8).all()


@pytest.mark.parametrize("grid,dim", [((4, 6), 1), ((3, 4, 5), 0)])
def test_mirror_permutation_is_involution(grid, dim):
    pi = mirror_permutation(grid, dim)
    assert torch.equal(pi[pi], torch.arange(len(pi)))
    tokens = torch.arange(len(pi)).reshape(*grid)
    assert torch.equal(tokens.flip(dim).reshape(-1), pi)


def test_canonicalize_makes_axis_central():
    x = _symmetric(2)
    row = torch.tensor([[0.0, 1.0, 18.0]])  # axis at column 18 after a shift of +2
    shifted = torch.roll(x, shifts=2, dims=3)
    canon = canonicalize(shifted, row)
    assert torch.allclose(canon[..., 3:-3], x[..., 3:-3], atol=1e-5)
    assert torch.equal(centre_axes(2, (5, 7)), torch.tensor([[0.0, 1.0, 3.0]] * 2))
