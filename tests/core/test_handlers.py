"""The trainer's handlers (``mfassl.handlers``): the non-finite stop and the checkpoint saver's explicit mapping."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, TensorDataset

from mfassl.checkpoints import CheckpointSaver, find_last_checkpoint, load_checkpoint
from mfassl.engine import create_optimizer, create_trainer

from helpers import tiny_method

DATA = TensorDataset(torch.rand(8, 1, 40, 40, generator=torch.Generator().manual_seed(0)))


def test_a_nan_term_stops_the_run_before_the_update_naming_the_terms(tmp_path) -> None:
    """At iteration 3 the mirror term turns NaN: the run stops with FloatingPointError naming the iteration and the
    non-finite terms, before the backward and the optimizer touch the weights; the checkpoint of epoch 1 stays."""
    method = tiny_method("dino")
    real_forward = method.forward

    def forward(images, axes=None, epoch=0.0):
        out = real_forward(images, axes, epoch=epoch)
        if forward.calls == 2:  # the third step
            out["l_mid"] = out["l_mid"] * float("nan")
            out["loss"] = out["loss"] + out["l_mid"]
        forward.calls += 1
        return out

    forward.calls = 0
    method.forward = forward
    loader = DataLoader(DATA, batch_size=4)
    trainer = create_trainer(method, create_optimizer(method), len(loader), 2, batch_size=4, warmup_epochs=0.5,
                             output_dir=tmp_path, progress=False, tensorboard=False)
    after_two: dict[str, torch.Tensor] = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: after_two.update(
        {k: v.detach().clone() for k, v in method.named_parameters()}))
    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 3 \(non-finite terms: l_mid nan, loss nan"
                                                 r"\); stopping before the weights are corrupted"):
        trainer.run(loader, max_epochs=2)
    for k, v in method.named_parameters():  # neither the student nor the teacher moved
        assert torch.equal(v, after_two[k]), k
    assert any(k.startswith("objective.teacher.") for k in after_two)
    assert find_last_checkpoint(tmp_path / "checkpoints").name == "checkpoint_2.pt"
    assert load_checkpoint(tmp_path / "checkpoints" / "checkpoint_2.pt")["trainer"]["iteration"] == 2


def test_checkpoint_saver_writes_an_explicit_to_save_mapping_on_any_engine(tmp_path) -> None:
    """As ignite's Checkpoint: the saver writes the mapping it is given, on a plain engine too."""
    model = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    saver = CheckpointSaver(tmp_path, n_saved=1, to_save={"model": model})
    saver.attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_4.pt"]
    state = load_checkpoint(tmp_path / "checkpoint_4.pt")
    assert set(state) == {"model"} and torch.equal(state["model"]["weight"], model.weight.detach())
    with pytest.raises(TypeError, match="nothing to save"):
        CheckpointSaver(tmp_path / "other").attach(Engine(lambda e, b: None))
    with pytest.raises(TypeError, match=r"to_save\['data'\] \(list\) has no state_dict"):
        CheckpointSaver(tmp_path / "other").attach(Engine(lambda e, b: None), {"data": []})


def test_create_trainer_hands_its_mapping_to_the_savers_it_is_given(tmp_path) -> None:
    method = tiny_method("mocov3")
    loader = DataLoader(DATA, batch_size=4)
    saver = CheckpointSaver(tmp_path / "ck")
    trainer = create_trainer(method, create_optimizer(method), len(loader), 1, batch_size=4, progress=False,
                             handlers=[saver])
    assert saver.objects is trainer.checkpoint_objects
    assert set(saver.objects) == {"model", "optimizer", "trainer", "run"} and saver.objects["model"] is method
