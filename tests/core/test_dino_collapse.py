"""DINO on a few structured images: centring and sharpening together keep the teacher from collapsing.

DINO (Caron et al., 2021) collapses in two ways: with centring alone the teacher's output becomes uniform
(entropy ``log K``), with sharpening alone one prototype takes every image (the batch-mean output has
entropy 0). A tiny MFASSL-DINO (no mirror branch) trains on six distinct synthetic patterns; the teacher's
softmax on those images is measured over the last steps:

- ``h_sample``: mean entropy of each image's teacher distribution (below ``log K``: not uniform);
- ``h_mean``: entropy of the mean distribution over the images (well above 0: not one prototype);
- ``info = h_mean - h_sample``: how much the output says about which image it saw.

The same run without sharpening, and without centring, shows each collapse, so the measures can fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mfassl.method import MFASSL

from helpers import tiny_backbone, train_steps

OUT_DIM = 32


def patterns(size: int = 40) -> torch.Tensor:
    """``(6, 1, size, size)`` images in [0, 1]: vertical, horizontal and diagonal stripes, a checkerboard,
    a disk and rings."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = (x ** 2 + y ** 2).sqrt()
    images = [torch.sin(6 * math.pi * x), torch.sin(6 * math.pi * y), torch.sin(4 * math.pi * (x + y)),
              torch.sign(torch.sin(4 * math.pi * x) * torch.sin(4 * math.pi * y)), 2.0 * (r < 0.5).float() - 1.0,
              torch.cos(8 * math.pi * r)]
    return 0.5 + 0.5 * torch.stack(images)[:, None]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions along the last dim."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def train_and_measure(steps: int, last: int = 20, **loss_kwargs) -> dict[str, float]:
    """Train the tiny DINO for ``steps`` steps (seeded) and average the teacher's measures over the ``last`` ones."""
    torch.manual_seed(0)
    method = MFASSL(tiny_backbone(2), "dino", dict(out_dim=OUT_DIM, hidden_dim=64, bottleneck_dim=32, **loss_kwargs),
                    mirror=False, views=dict(global_size=32, local_size=16, n_local=2))
    dino = method.objective
    images = patterns()
    probe = F.interpolate(images, size=32, mode="bilinear", align_corners=False)
    seen: list[tuple[float, float]] = []

    def measure(step: int) -> None:
        if step < steps - last:
            return
        with torch.no_grad():
            logits = dino.teacher[1](dino.teacher[0](probe))  # (6, K)
            q = F.softmax((logits - dino.loss_fn.center) / dino.loss_fn.teacher_temp, dim=-1)
        seen.append((float(_entropy(q).mean()), float(_entropy(q.mean(0)))))

    fit = train_steps(method, lambda: method(images, epoch=3.0), steps, lr=5e-4, teacher_momentum=0.99,
                      clip_grad=3.0, weight_decay=0.04, after_step=measure)
    assert all(math.isfinite(v) for v in fit.losses)
    h_sample = sum(s for s, _ in seen) / len(seen)
    h_mean = sum(m for _, m in seen) / len(seen)
    return {"h_sample": h_sample, "h_mean": h_mean, "info": h_mean - h_sample}


def test_dino_teacher_does_not_collapse_on_structured_images():
    # measured with seed 0: h_sample 2.60 (0.86 below log 32 = 3.47), h_mean 3.05, info 0.44; other seeds gave
    # margins 0.62-0.97 and info 0.41-0.45 (after 100 steps some seeds are still within 0.2 of log K)
    got = train_and_measure(200)
    assert got["h_sample"] < math.log(OUT_DIM) - 0.4
    assert got["h_mean"] > 2.0
    assert got["info"] > 0.25


@pytest.mark.parametrize("collapse", ["no sharpening", "no centring"])
def test_the_measures_detect_each_collapse(collapse):
    if collapse == "no sharpening":  # the teacher as soft as the student: uniform (measured: margin 0.03, info 0.005)
        got = train_and_measure(60, teacher_temp=0.1)
        assert got["h_sample"] > math.log(OUT_DIM) - 0.15 and got["info"] < 0.1
    else:  # the centre stays at zero: one prototype for every image (measured: h_mean 6e-7)
        got = train_and_measure(60, center_momentum=1.0)
        assert got["h_mean"] < 0.5 and got["info"] < 0.1


def test_teacher_temperature_warm_up_follows_the_epoch_of_each_step():
    """DINO's warm-up: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up epochs, then
    constant; MFASSL sets it from the step's epoch for both losses (standard views and mirror pair)."""
    torch.manual_seed(0)
    method = MFASSL(tiny_backbone(2), "dino", dict(out_dim=OUT_DIM, hidden_dim=32, bottleneck_dim=16,
                                                   warmup_teacher_temp=0.02, teacher_temp=0.06,
                                                   warmup_teacher_temp_epochs=4.0),
                    views=dict(global_size=32, local_size=16, n_local=0), t_sym=0.0, t_mfa=0.0, t_gate=0.0)
    dino = method.objective
    assert dino.loss_fn.teacher_temp == pytest.approx(0.02)  # before any step: the warm-up's start
    for epoch, want in ((0.0, 0.02), (1.0, 0.03), (3.0, 0.05), (4.0, 0.06), (9.5, 0.06)):
        method(patterns(32)[:4], epoch=epoch)
        assert dino.loss_fn.teacher_temp == pytest.approx(want) and dino.pair_loss_fn.teacher_temp == pytest.approx(want)
    plain = MFASSL(tiny_backbone(2), "dino", dict(out_dim=OUT_DIM, hidden_dim=32, bottleneck_dim=16), mirror=False,
                   views=dict(global_size=32, local_size=16, n_local=0))
    plain(patterns(32)[:4], epoch=0.0)
    assert plain.objective.loss_fn.teacher_temp == 0.04  # no warm-up by default


def test_head_batch_norm_spreads_nearly_equal_features_and_momentum_is_settable():
    """An encoder at initialisation gives nearly the same feature for every image; the head's BatchNorm
    (``head_batch_norm``) makes the teacher's logits differ across images, without it they barely do."""
    from mfassl.objectives import DINO

    torch.manual_seed(0)
    feats = torch.randn(1, 32).repeat(16, 1) + 1e-3 * torch.randn(16, 32)  # (16, 32): almost one feature
    spread = {}
    for bn in (False, True):
        torch.manual_seed(1)
        head = DINO(tiny_backbone(2), out_dim=64, hidden_dim=32, bottleneck_dim=16, head_batch_norm=bn).head.train()
        with torch.no_grad():
            spread[bn] = float(head(feats).std(0).mean())
    assert spread[False] < 1e-3 < 0.05 < spread[True]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == 2
    dino = DINO(tiny_backbone(2), out_dim=64, hidden_dim=32, bottleneck_dim=16, momentum=0.99)
    assert dino.momentum == 0.99 and DINO.momentum == 0.996
    assert MFASSL(dino.backbone, dino, mirror=False).teacher_momentum == 0.99
