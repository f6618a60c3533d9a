"""create_optimizer: the decay groups, torch's fused AdamW kernel by default, and resumes across kernel choices."""

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from torch.utils.data import DataLoader, TensorDataset

from mfassl.engine import create_optimizer, create_trainer

from helpers import tiny_method

DATA = TensorDataset(torch.rand(16, 1, 40, 40, generator=torch.Generator().manual_seed(0)))


def test_decay_groups_and_fused_kernel_by_default():
    method = tiny_method("mocov3")
    opt = create_optimizer(method, lr="0.001", weight_decay="0.05")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0 and decay["lr"] == 0.001
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert decay["fused"] is True and no_decay["fused"] is True


@pytest.mark.parametrize("value, fused", [("false", False), ("off", False), (False, False), ("true", True),
                                          ("null", True)])
def test_fused_option_as_a_bundle_passes_it(value, fused):
    opt = create_optimizer(tiny_method("dino"), fused=value)
    assert bool(opt.param_groups[0]["fused"]) is fused


def test_fused_option_refuses_a_non_boolean():
    with pytest.raises(ValueError, match="option 'fused': 'maybe'"):
        create_optimizer(tiny_method("dino"), fused="maybe")


def test_fused_kernel_where_it_cannot_run():
    net = nn.Linear(3, 2, device="meta")
    assert not create_optimizer(net).param_groups[0]["fused"]  # default: falls back to torch's default kernel
    with pytest.raises(ValueError, match=r"parameter 'weight' \(torch.float32 on meta\)"):
        create_optimizer(net, fused=True)


def _steps(fused: bool, objective: str, n: int) -> tuple[list[float], list[torch.Tensor]]:
    torch.manual_seed(0)
    method = tiny_method(objective)
    opt = create_optimizer(method, fused=fused)
    x = torch.rand(4, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    losses = []
    for s in range(n):
        torch.manual_seed(10 + s)
        out = method(x, epoch=1.0)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    return losses, [p.detach().clone() for p in method.parameters()]


def test_fused_and_default_kernels_make_the_same_update():
    """One step from the same gradients: the same weights to float32 rounding (lr 5e-4, so the update is
    ~5e-4 and the kernels agree to ~1e-8)."""
    _, start = _steps(False, "mocov3", 0)
    _, fused = _steps(True, "mocov3", 1)
    _, default = _steps(False, "mocov3", 1)
    assert max(float((a - b).abs().max()) for a, b in zip(fused, start)) > 1e-4  # the step moved the weights
    for a, b in zip(fused, default):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_fused_and_default_kernels_train_alike():
    """Five DINO steps: the same losses. (The weights are not compared after several steps: parameters whose
    gradient is zero in exact arithmetic, such as the attention's key bias, get Adam-normalised float noise, which
    differs between any two kernels.)"""
    fused, _ = _steps(True, "dino", 5)
    default, _ = _steps(False, "dino", 5)
    assert fused[0] != pytest.approx(fused[-1], rel=1e-2)  # the loss moved
    assert fused == pytest.approx(default, rel=1e-5)


def _run(out_dir, epochs, fused, resume=None):
    method = tiny_method("dino")
    loader = DataLoader(DATA, batch_size=4, shuffle=True)
    opt = create_optimizer(method, fused=fused)
    trainer = create_trainer(method, opt, len(loader), 4, batch_size=4, warmup_epochs=1, output_dir=out_dir,
                             progress=False, resume_from=resume)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    torch.manual_seed(123)
    trainer.run(loader, max_epochs=epochs)
    return losses, opt


@pytest.mark.parametrize("first, then", [(False, True), (True, False)])
def test_resume_keeps_the_kernel_the_code_asks_for(tmp_path, first, then):
    """A checkpoint written with one kernel resumes on the other: the optimizer keeps its own choice, its
    ``step`` counters are where that kernel wants them, and the losses follow an uninterrupted run."""
    full, _ = _run(tmp_path / "full", 4, then)
    part, _ = _run(tmp_path / "run", 2, first)
    rest, opt = _run(tmp_path / "run", 4, then, resume="auto")
    assert len(rest) == 8
    for group in opt.param_groups:
        assert bool(group["fused"]) is then
        for p in group["params"]:
            step = opt.state[p]["step"]
            assert step.dtype == torch.float32 and float(step) == 16.0
    assert part + rest == pytest.approx(full, rel=1e-4, abs=1e-5)
