"""The schedules are handlers (``mfassl.schedule_handlers``): the trainer's own follow their formulas step by step,
and a further schedule joins a run by attaching itself, with no change to ``create_trainer``, and resumes exactly."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader, TensorDataset

from mfassl.checkpoints import CheckpointSaver
from mfassl.engine import create_optimizer, create_trainer
from mfassl.schedule_handlers import StateParamSchedule, weight_decay_schedule
from mfassl.schedules import cosine_momentum, scaled_lr, warmup_cosine

from helpers import tiny_method

DATA = TensorDataset(torch.rand(8, 1, 40, 40, generator=torch.Generator().manual_seed(0)))
STEPS_PER_EPOCH, EPOCHS = 2, 2
TOTAL = STEPS_PER_EPOCH * EPOCHS


def _trainer(method, out=None, resume=None, **kw):
    loader = DataLoader(DATA, batch_size=4, shuffle=True)
    optimizer = create_optimizer(method, weight_decay=0.04)
    trainer = create_trainer(method, optimizer, len(loader), EPOCHS, batch_size=4, warmup_epochs=0.5, base_lr=1e-3,
                             min_lr=1e-5, output_dir=out, progress=False, tensorboard=False, resume_from=resume, **kw)
    return trainer, optimizer, loader


def test_lr_and_teacher_momentum_follow_their_formulas_each_step() -> None:
    method = tiny_method("dino")
    used: list[float] = []
    real_update = method.update_teacher
    method.update_teacher = lambda m: (used.append(m), real_update(m))[1]  # the momentum the EMA was given
    trainer, optimizer, loader = _trainer(method)
    seen: list[tuple[float, ...]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(
        (e.state.output["lr"], optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"],
         e.state.output["momentum"], e.state.teacher_momentum)))
    trainer.run(loader, max_epochs=EPOCHS)
    peak = scaled_lr(1e-3, 4)
    for step, (lr, lr0, lr1, m, state_m) in enumerate(seen):
        assert lr == lr0 == lr1 == pytest.approx(warmup_cosine(step, TOTAL, 0.5 * STEPS_PER_EPOCH, peak, 1e-5))
        assert m == state_m == used[step] == pytest.approx(cosine_momentum(step, TOTAL, 0.996, 1.0))
    assert len(seen) == len(used) == TOTAL and seen[0][0] == 0.0 and seen[1][0] == pytest.approx(peak)


def _run_with_weight_decay(out, epochs, resume=None, attach_by="attach"):
    """The trainer of ``_trainer`` plus DINO's cosine weight decay 0.04 -> 0.4, attached from outside."""
    method = tiny_method("dino")
    loader = DataLoader(DATA, batch_size=4, shuffle=True)
    optimizer = create_optimizer(method, weight_decay=0.04)
    schedule = weight_decay_schedule(optimizer, 0.04, 0.4, total_steps=TOTAL)
    extra = {"handlers": [schedule, CheckpointSaver(out / "checkpoints")]} if attach_by == "handlers" else {}
    trainer = create_trainer(method, optimizer, len(loader), EPOCHS, batch_size=4, warmup_epochs=0.5,
                             output_dir=out, progress=False, tensorboard=False, resume_from=resume, **extra)
    if attach_by == "attach":
        schedule.attach(trainer)
    records: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: records.append(
        dict(e.state.output, decay_group=optimizer.param_groups[0]["weight_decay"],
             plain_group=optimizer.param_groups[1]["weight_decay"])))
    torch.manual_seed(123)
    trainer.run(loader, max_epochs=epochs)
    return records


@pytest.mark.parametrize("attach_by", ["attach", "handlers"])
def test_an_extra_schedule_joins_without_a_trainer_edit(tmp_path, attach_by) -> None:
    """DINO's weight-decay schedule, attached by the caller (``schedule.attach(trainer)``, or in ``handlers`` as a
    bundle lists it): it sets the decaying group each step, leaves the biases' group at 0, reaches the step's
    record (so TensorBoard and the history log it), and a resumed run continues it exactly with no entry of its
    own in the checkpoint."""
    full = _run_with_weight_decay(tmp_path / "a", EPOCHS, attach_by=attach_by)
    for step, r in enumerate(full):
        expected = warmup_cosine(step, TOTAL, 0.0, 0.04, 0.4)
        assert r["weight_decay"] == r["decay_group"] == pytest.approx(expected) and r["plain_group"] == 0.0
    assert full[0]["weight_decay"] == pytest.approx(0.04) and full[-1]["weight_decay"] > 0.3
    part = _run_with_weight_decay(tmp_path / "b", 1, attach_by=attach_by)
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "trainer", "run"}  # no scheduler state
    rest = _run_with_weight_decay(tmp_path / "b", EPOCHS, resume="auto", attach_by=attach_by)
    assert [r["weight_decay"] for r in part + rest] == [r["weight_decay"] for r in full]
    assert [r["loss"] for r in part + rest] == pytest.approx([r["loss"] for r in full], abs=1e-6)


def test_a_state_schedule_of_ones_own_reaches_the_state_and_the_record() -> None:
    method = tiny_method("mocov3")
    trainer, _, loader = _trainer(method)
    StateParamSchedule(lambda step: 10.0 + step, "my_value", output_key="mine").attach(trainer)
    seen: list[tuple[float, float]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.my_value,
                                                                                 e.state.output["mine"])))
    trainer.run(loader, max_epochs=1)
    assert seen == [(10.0, 10.0), (11.0, 11.0)]


def test_schedules_simulate_as_ignites_do() -> None:
    """Outside a run (ignite's simulate_values) a schedule counts its calls as ignite's schedulers do."""
    from functools import partial

    from mfassl.schedule_handlers import OptimizerParamSchedule

    values = OptimizerParamSchedule.simulate_values(
        4, param_name="lr", fn=partial(warmup_cosine, total_steps=4, warmup_steps=1, peak=1.0, final=0.0))
    assert [v for _, v in values] == pytest.approx([warmup_cosine(i, 4, 1, 1.0, 0.0) for i in range(4)])
    state = StateParamSchedule.simulate_values(3, fn=lambda i: 2.0 * i, param_name="x")
    assert [v for _, v in state] == [0.0, 2.0, 4.0]


def test_weight_decay_schedule_needs_a_decaying_group() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], weight_decay=0.0)
    with pytest.raises(ValueError, match="no param group"):
        weight_decay_schedule(optimizer, 0.04, 0.4, total_steps=4)
    decaying = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], weight_decay=0.04)
    with pytest.raises(ValueError, match="'total_steps': '4' is a string"):
        weight_decay_schedule(decaying, 0.04, 0.4, total_steps="4")
