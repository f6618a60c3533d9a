"""The objectives' losses and the teacher update against small references written from the published formulas.

Each reference works in double precision with plain loops over the terms of its formula; the
implementations are checked in float32 (at float32 tolerance) and, where they accept it, in float64 (at
float64 tolerance, which any difference of convention would break).

- DINO (Caron et al., 2021): ``mean over teacher views i and student views j != i`` of
  ``mean_b -sum_k q_i log p_j`` with ``q_i = softmax((t_i - c) / T_t)``, ``p_j = softmax(s_j / T_s)``; the
  first ``T`` student views are the teacher's views; then ``c <- m c + (1 - m) mean(teacher logits)``.
- MoCo-v3 InfoNCE (Chen, Xie & He, 2021): ``2 tau * mean_i -log softmax_j(cos(q_i, k_j) / tau)[i]``.
- MAE (He et al., 2022): mean over the hidden patches of the per-patch pixel MSE, targets optionally
  normalised per patch (``(x - mean) / sqrt(var + 1e-6)``, biased variance).
- Teacher EMA: ``theta_t <- m theta_t + (1 - m) theta_s`` for every parameter, buffers copied.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn as nn

from mfassl.objectives import DINO, MAE, DINOLoss, InfoNCELoss, MoCoV3, patchify, update_momentum

from helpers import OBJECTIVE_KWARGS, tiny_backbone


# ---------------------------------------------------------------------------- references
def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    """Row-wise ``z - log sum exp z`` of a 1-D tensor, written out."""
    top = z.max()
    return z - top - torch.log(torch.exp(z - top).sum())


def dino_reference(teacher: torch.Tensor, student: torch.Tensor, center: torch.Tensor, teacher_temp: float,
                   student_temp: float) -> torch.Tensor:
    """``teacher`` ``(T, B, K)``, ``student`` ``(S, B, K)``, ``center`` ``(K,)`` -> the DINO loss (float64)."""
    n_t, b = teacher.shape[:2]
    n_s = student.shape[0]
    terms = []
    for i in range(n_t):
        for j in range(n_s):
            if i == j:
                continue
            per_sample = []
            for n in range(b):
                q = torch.exp(_log_softmax((teacher[i, n] - center) / teacher_temp))
                log_p = _log_softmax(student[j, n] / student_temp)
                per_sample.append(-(q * log_p).sum())
            terms.append(torch.stack(per_sample).mean())
    return torch.stack(terms).mean()


def center_reference(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """``(K,)`` centre after one update with ``(T, B, K)`` teacher logits."""
    rows = teacher.reshape(-1, teacher.shape[-1])
    return momentum * center + (1.0 - momentum) * sum(rows[i] for i in range(rows.shape[0])) / rows.shape[0]


def infonce_reference(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(B, D)`` queries and keys -> ``2 tau`` times the mean cross-entropy with positives on the diagonal."""
    b = q.shape[0]
    total = q.new_zeros(())
    for i in range(b):
        cos = torch.stack([(q[i] @ k[j]) / (q[i].norm() * k[j].norm()) for j in range(b)])
        total = total - _log_softmax(cos / temperature)[i]
    return 2.0 * temperature * total / b


def patches_reference(images: torch.Tensor, unit: tuple[int, ...]) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, N, prod(unit) * C)``: cells in row-major grid order, pixels ``(*unit, C)`` in a row."""
    b = images.shape[0]
    grid = [s // u for s, u in zip(images.shape[2:], unit)]
    cells = []
    for cell in itertools.product(*[range(g) for g in grid]):
        region = tuple(slice(i * u, (i + 1) * u) for i, u in zip(cell, unit))
        block = images[(slice(None), slice(None)) + region]  # (B, C, *unit)
        cells.append(block.movedim(1, -1).reshape(b, -1))
    return torch.stack(cells, dim=1)


def mae_reference(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """``(B, N, P)`` predictions and target patches, ``(B, N)`` hidden -> mean per-patch MSE over hidden patches."""
    per_patch = []
    for n, i in hidden.nonzero().tolist():
        t = target[n, i]
        if norm_pix:
            mean = t.sum() / t.numel()
            var = ((t - mean) ** 2).sum() / t.numel()
            t = (t - mean) / math.sqrt(float(var) + 1e-6)
        per_patch.append(((pred[n, i] - t) ** 2).sum() / t.numel())
    return torch.stack(per_patch).mean()


# ---------------------------------------------------------------------------- DINO
DINO_SHAPES = [(2, 2, 3, 7), (2, 6, 4, 16), (1, 3, 5, 4), (3, 2, 2, 5)]  # (teacher views, student views, B, K)
DINO_TEMPS = [(0.04, 0.1), (0.07, 0.2), (1.0, 1.0)]  # (teacher, student)


def _dino_inputs(n_t: int, n_s: int, b: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_t, b, k, generator=g, dtype=torch.float64), torch.randn(n_s, b, k, generator=g,
            dtype=torch.float64), 0.3 * torch.randn(k, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("temps", DINO_TEMPS)
@pytest.mark.parametrize("shape", DINO_SHAPES)
def test_dino_loss_matches_the_reference(shape, temps):
    teacher_temp, student_temp = temps
    teacher, student, center = _dino_inputs(*shape)
    want = dino_reference(teacher, student, center, teacher_temp, student_temp)
    for dtype, tol in ((torch.float64, {}), (torch.float32, dict(rtol=2e-6, atol=1e-6))):
        loss_fn = DINOLoss(shape[3], student_temp=student_temp, teacher_temp=teacher_temp).to(dtype)
        loss_fn.center.copy_(center.to(dtype))
        got = loss_fn(teacher.to(dtype), student.to(dtype), update_center=False)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, **tol)


@pytest.mark.parametrize("shape", DINO_SHAPES[:2])
def test_dino_gradient_reaches_the_student_only(shape):
    teacher, student, center = _dino_inputs(*shape, seed=1)
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    loss_fn = DINOLoss(shape[3]).double()
    loss_fn.center.copy_(center)
    loss_fn(teacher, student).backward()
    assert teacher.grad is None  # the teacher's targets are constants
    s_ref = student.detach().clone().requires_grad_(True)
    dino_reference(teacher.detach(), s_ref, center, 0.04, 0.1).backward()
    torch.testing.assert_close(student.grad, s_ref.grad)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 1.0])
def test_dino_centre_is_the_ema_of_the_teacher_logits_and_used_from_the_next_call(momentum):
    n_t, n_s, b, k = 2, 4, 3, 6
    teacher, student, c0 = _dino_inputs(n_t, n_s, b, k, seed=2)
    teacher2, student2, _ = _dino_inputs(n_t, n_s, b, k, seed=3)
    loss_fn = DINOLoss(k, center_momentum=momentum).double()
    assert loss_fn.center.shape == (1, k) and not loss_fn.center.any()  # starts at zero
    loss_fn.center.copy_(c0)
    first = loss_fn(list(teacher), list(student))  # per-view lists, as the objective may pass them
    torch.testing.assert_close(first, dino_reference(teacher, student, c0, 0.04, 0.1))  # the centre before the update
    c1 = center_reference(c0, teacher, momentum)
    torch.testing.assert_close(loss_fn.center[0], c1)
    second = loss_fn(teacher2, student2)
    torch.testing.assert_close(second, dino_reference(teacher2, student2, c1, 0.04, 0.1))
    torch.testing.assert_close(loss_fn.center[0], center_reference(c1, teacher2, momentum))
    kept = loss_fn.center.clone()
    loss_fn(teacher, student, update_center=False)
    assert torch.equal(loss_fn.center, kept)


def test_dino_loss_by_hand():
    # a uniform student gives log K whatever the teacher; a one-hot-like teacher picks -log p_j[k] of its class
    k = 5
    teacher = torch.randn(2, 3, k, dtype=torch.float64)
    uniform = torch.zeros(4, 3, k, dtype=torch.float64)
    assert float(DINOLoss(k).double()(teacher, uniform)) == pytest.approx(math.log(k), rel=1e-12)
    hot = torch.full((2, 1, k), -50.0, dtype=torch.float64)
    hot[0, 0, 1] = hot[1, 0, 3] = 50.0  # teacher view 0 says class 1, view 1 says class 3
    student = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15]], dtype=torch.float64)).expand(3, 1, k) * 0.1
    # student temperature 0.1 undoes the 0.1 above: p = (0.1, 0.2, 0.3, 0.25, 0.15) for every view
    # pairs (0, 1), (0, 2) score class 1; (1, 0), (1, 2) score class 3
    want = -(2 * math.log(0.2) + 2 * math.log(0.25)) / 4
    assert float(DINOLoss(k).double()(hot, student, update_center=False)) == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("b,d", [(2, 3), (8, 16), (5, 4)])
def test_infonce_matches_the_reference(b, d, temperature):
    g = torch.Generator().manual_seed(b * d)
    q = torch.randn(b, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, d, generator=g, dtype=torch.float64)
    want = infonce_reference(q, k, temperature)
    loss_fn = InfoNCELoss(temperature)
    torch.testing.assert_close(loss_fn(q, k), want)
    torch.testing.assert_close(loss_fn(q.float(), k.float()).double(), want, rtol=2e-6, atol=1e-6)
    # scale-free in both arguments (cosine similarities), and the query gradient is the reference's
    torch.testing.assert_close(loss_fn(3.0 * q, 0.5 * k), want)
    q1, q2 = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
    loss_fn(q1, k).backward()
    infonce_reference(q2, k, temperature).backward()
    torch.testing.assert_close(q1.grad, q2.grad)


@pytest.mark.parametrize("temperature", [0.1, 0.2, 1.0])
def test_infonce_by_hand(temperature):
    b = 4
    eye = torch.eye(b, dtype=torch.float64)  # positives similar (cos 1), negatives orthogonal (cos 0)
    want = 2 * temperature * (-1 / temperature + math.log(math.exp(1 / temperature) + b - 1))
    assert float(InfoNCELoss(temperature)(eye, eye)) == pytest.approx(want, rel=1e-12)
    # keys in another order: each query's positive is now orthogonal to it, and one negative is its twin
    shifted = eye.roll(1, dims=0)
    want = 2 * temperature * (0.0 + math.log(math.exp(1 / temperature) + b - 1))
    assert float(InfoNCELoss(temperature)(eye, shifted)) == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------- MAE
@pytest.mark.parametrize("shape,unit", [((2, 3, 8, 12), (4, 4)), ((1, 2, 9, 7), (4, 2)), ((2, 2, 4, 6, 8), (2, 3, 4))])
def test_patchify_matches_the_reference(shape, unit):
    images = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(patchify(images, unit), patches_reference(images, unit), rtol=0, atol=0)


# (dims, backbone, image side, mask ratio, normalised targets): ViTs drop hidden tokens, the Swin replaces them
MAE_CASES = [(2, "vit", 32, 0.75, True), (2, "vit", 32, 0.5, False), (3, "vit", 16, 0.75, False),
             (3, "vit", 16, 0.5, True), (2, "swin", 64, 0.75, True), (2, "swin", 64, 0.5, False)]


@pytest.mark.parametrize("dims,kind,side,mask_ratio,norm_pix", MAE_CASES)
def test_mae_loss_is_the_mean_mse_over_hidden_patches(dims, kind, side, mask_ratio, norm_pix, monkeypatch):
    torch.manual_seed(0)
    obj = MAE(tiny_backbone(dims, kind), mask_ratio=mask_ratio, norm_pix_loss=norm_pix, **OBJECTIVE_KWARGS["mae"])
    seen: dict[str, torch.Tensor] = {}
    draw = obj.draw_mask

    def spy_mask(x):
        seen["score"], seen["tokens"] = draw(x)
        return seen["score"], seen["tokens"]

    monkeypatch.setattr(obj, "draw_mask", spy_mask)
    obj.decoder.register_forward_hook(lambda mod, args, out: seen.__setitem__("pred", out))
    x = torch.rand(2, 1, *([side] * dims)) * 4.0 - 1.0
    loss = obj([x])["loss"]
    hidden = seen["score"]
    assert hidden.dtype == torch.bool and (hidden.sum(1) == round(mask_ratio * hidden.shape[1])).all()
    want = mae_reference(seen["pred"].detach().double(), patches_reference(x.double(), obj.unit), hidden, norm_pix)
    torch.testing.assert_close(loss.detach().double(), want, rtol=1e-5, atol=1e-6)
    # visible patches are not scored: changing the prediction there changes nothing
    pred = seen["pred"].detach().double().clone()
    pred[~hidden] += 10.0
    torch.testing.assert_close(mae_reference(pred, patches_reference(x.double(), obj.unit), hidden, norm_pix), want)


# ---------------------------------------------------------------------------- teacher EMA
def _student_and_teacher() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.GELU(), nn.Linear(7, 3)).double()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
            p.requires_grad_(False)
    student(torch.randn(6, 5, dtype=torch.float64))  # moves the student's batch-norm statistics
    return student, teacher


@pytest.mark.parametrize("m", [0.0, 0.5, 0.9, 0.996, 1.0])
def test_update_momentum_is_the_ema(m):
    student, teacher = _student_and_teacher()
    t0 = [p.clone() for p in teacher.parameters()]
    s0 = copy.deepcopy(student.state_dict())
    update_momentum(student, teacher, m)
    for t, old, s in zip(teacher.parameters(), t0, student.parameters()):
        torch.testing.assert_close(t, m * old + (1 - m) * s.detach())
        assert not t.requires_grad
    if m == 1.0:
        assert all(torch.equal(t, old) for t, old in zip(teacher.parameters(), t0))
    if m == 0.0:
        assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    for bt, bs in zip(teacher.buffers(), student.buffers()):  # running statistics are copied, not averaged
        assert torch.equal(bt, bs)
    for k, v in student.state_dict().items():  # the student is left alone
        assert torch.equal(v, s0[k]), k


def test_repeated_ema_towards_a_fixed_student_is_geometric():
    student, teacher = _student_and_teacher()
    t0 = [p.clone() for p in teacher.parameters()]
    m, n = 0.9, 12
    for _ in range(n):
        update_momentum(student, teacher, m)
    for t, old, s in zip(teacher.parameters(), t0, student.parameters()):
        torch.testing.assert_close(t, m ** n * old + (1 - m ** n) * s.detach())


@pytest.mark.parametrize("name,cls", [("dino", DINO), ("mocov3", MoCoV3)])
def test_update_teacher_moves_every_teacher_tensor_towards_its_student(name, cls):
    torch.manual_seed(0)
    obj = cls(tiny_backbone(2), **OBJECTIVE_KWARGS[name])
    pairs = obj.student_teacher_pairs()
    assert [s for s, _ in pairs] == [obj.backbone, obj.head if name == "dino" else obj.projector]
    with torch.no_grad():
        for p in obj.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # the student moves away from its copy
    before = [[p.clone() for p in t.parameters()] for _, t in pairs]
    obj.update_teacher(0.7)
    for (student, teacher), old in zip(pairs, before):
        for (name_s, s), (name_t, t), o in zip(student.named_parameters(), teacher.named_parameters(), old):
            assert name_s == name_t
            torch.testing.assert_close(t, 0.7 * o + 0.3 * s.detach(), rtol=1e-6, atol=1e-7)
