import json
import os
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader, TensorDataset

from mfassl.engine import ResumeError, create_optimizer, create_trainer, find_last_checkpoint, load_checkpoint

from helpers import tiny_method

DATA = TensorDataset(torch.rand(16, 1, 40, 40, generator=torch.Generator().manual_seed(0)))


def _run(out_dir, epochs, resume=None, max_epochs=4, **kw):
    method = tiny_method("dino")
    loader = DataLoader(DATA, batch_size=4, shuffle=True)
    trainer = create_trainer(method, create_optimizer(method), len(loader), max_epochs, batch_size=4, warmup_epochs=1,
                             output_dir=out_dir, progress=False, resume_from=resume, **kw)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    torch.manual_seed(123)
    trainer.run(loader, max_epochs=epochs)
    return losses, trainer, method


def test_resume_gives_the_same_losses(tmp_path):
    full, _, _ = _run(tmp_path / "a", 4)
    part, _, _ = _run(tmp_path / "b", 2)
    assert find_last_checkpoint(tmp_path / "b" / "checkpoints").name == "checkpoint_8.pt"
    rest, trainer, _ = _run(tmp_path / "b", 4, resume="auto")
    assert trainer.state.epoch == 4
    assert part + rest == pytest.approx(full, abs=1e-6)


def test_checkpoint_holds_model_optimizer_trainer_and_loads_weights_only(tmp_path):
    _, trainer, method = _run(tmp_path, 1, max_epochs=1)
    ckpt = find_last_checkpoint(tmp_path / "checkpoints")
    state = torch.load(ckpt, weights_only=True)
    assert {"model", "optimizer", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == 4 and state["trainer"]["epoch_length"] == 4
    for k, v in method.state_dict().items():
        assert torch.equal(state["model"][k], v), k


def test_scalars_reach_tensorboard(tmp_path):
    _, trainer, _ = _run(tmp_path, 1, max_epochs=1)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(trainer.state.tensorboard_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("loss", "base", "mirror", "l_eq", "l_mid", "gate_mean", "ramp", "w", "lr", "momentum"):
        assert f"train/{tag}" in tags
    assert len(acc.Scalars("train/loss")) == 4


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, 1, max_epochs=2)
    good = find_last_checkpoint(tmp_path / "checkpoints")
    before = good.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        # write a few bytes, then die as a killed process would
        f.write(b"PK\x03\x04 truncated")
        f.flush()
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, 2, resume="auto", max_epochs=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert find_last_checkpoint(tmp_path / "checkpoints") == good
    assert good.read_bytes() == before
    assert load_checkpoint(good)["trainer"]["iteration"] == 4
    losses, trainer, _ = _run(tmp_path, 2, resume="auto", max_epochs=2)
    assert trainer.state.epoch == 2 and len(losses) == 4


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoint_3.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="checkpoint_3.pt cannot be read"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_prepare_batch_reads_the_axis_keys():
    from mfassl.engine import default_prepare_batch

    img, row = torch.rand(2, 1, 8, 8), torch.tensor([[0.0, 1.0, 3.5]] * 2)
    for batch in ({"image": img, "axis": row}, {"image": img, "image_axis": row}, (img, row)):
        images, axes = default_prepare_batch(batch, "cpu")
        assert torch.equal(images, img) and torch.equal(axes, row)
    assert default_prepare_batch(img, "cpu")[1] is None


def _ckpts(d):
    return sorted(p.name for p in Path(d).glob("checkpoint_*.pt"))


def test_failed_save_keeps_the_last_good_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def disk_full_on_the_second_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_on_the_second_save)
    with pytest.raises(OSError, match=r"no space left on .*checkpoint_8\.pt"):  # mfassl.files.NoSpaceError
        _run(tmp_path, 2, max_epochs=2, n_saved=1)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint_4.pt"]  # nothing removed, no temp file
    assert load_checkpoint(tmp_path / "checkpoints" / "checkpoint_4.pt")["trainer"]["iteration"] == 4


def test_n_saved_prunes_checkpoints_already_on_disk_when_resuming(tmp_path):
    _run(tmp_path, 3, n_saved=3)
    assert _ckpts(tmp_path / "checkpoints") == ["checkpoint_12.pt", "checkpoint_4.pt", "checkpoint_8.pt"]
    _run(tmp_path, 4, resume="auto", n_saved=2)
    assert _ckpts(tmp_path / "checkpoints") == ["checkpoint_12.pt", "checkpoint_16.pt"]


def _trainer(out_dir, batch_size=4, max_epochs=4, resume="auto", method=None, **kw):
    method = method or tiny_method("dino")
    loader = DataLoader(DATA, batch_size=batch_size, shuffle=True)
    trainer = create_trainer(method, create_optimizer(method), len(loader), max_epochs, batch_size=batch_size,
                             warmup_epochs=1, output_dir=out_dir, progress=False, tensorboard=False,
                             resume_from=resume, **kw)
    return trainer, loader


def test_checkpoint_records_the_run_settings(two_epochs):
    run = load_checkpoint(two_epochs / "checkpoints" / "checkpoint_8.pt")["run"]
    assert run["batch_size"] == 4 and run["steps_per_epoch"] == 4 and run["max_epochs"] == 4
    assert run["objective"] == "dino" and run["mirror"] is True
    assert json.loads(run["network"])["config"]["embed_dim"] == 32


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A run dir holding checkpoint_8.pt of a 2-epoch run (4 planned); resume attempts below do not write."""
    out = tmp_path_factory.mktemp("two_epochs")
    _run(out, 2)
    return out


@pytest.mark.parametrize("change, key", [
    (dict(batch_size=8), "batch_size: 4 in the checkpoint, 8 now"),
    (dict(max_epochs=6), "max_epochs: 4 in the checkpoint, 6 now"),
    (dict(warmup_epochs=2.0), "warmup_epochs: 1.0 in the checkpoint, 2.0 now"),
])
def test_resume_with_other_settings_is_refused_unless_forced(two_epochs, change, key):
    tmp_path = two_epochs
    with pytest.raises(ResumeError, match=r"checkpoint_8\.pt.*" + re.escape(key)) as info:
        if "warmup_epochs" in change:
            method = tiny_method("dino")
            loader = DataLoader(DATA, batch_size=4, shuffle=True)
            create_trainer(method, create_optimizer(method), len(loader), 4, batch_size=4, output_dir=tmp_path,
                           progress=False, resume_from="auto", **change)
        else:
            _trainer(tmp_path, **change)
    assert "resume_force" in str(info.value)
    trainer, loader = _trainer(tmp_path, resume_force=True, **{k: v for k, v in change.items() if k != "warmup_epochs"})
    assert trainer.state.iteration == 8


def test_resume_with_another_network_names_checkpoint_and_keys(two_epochs):
    from mfassl.backbones import MFAViT
    from mfassl.method import MFASSL

    from helpers import OBJECTIVE_KWARGS

    torch.manual_seed(0)
    wide = MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=48, depth=3, num_heads=4)
    method = MFASSL(wide, "dino", OBJECTIVE_KWARGS["dino"], views=dict(global_size=32, local_size=16, n_local=2))
    for force in (False, True):  # a network that does not fit is refused even when forced
        with pytest.raises(ResumeError, match=r"(?s)checkpoint_8\.pt: it was written by another network.*"
                                              r"network\.embed_dim: 32 in the checkpoint, 48 now.*cls_token"):
            _trainer(two_epochs, method=method, resume_force=force)


def test_a_run_past_the_planned_schedule_is_refused(tmp_path):
    trainer, loader = _trainer(tmp_path, max_epochs=1, resume=None)
    with pytest.raises(ValueError, match="goes past the 1 epochs"):
        trainer.run(loader, max_epochs=2)


def test_handlers_from_a_list_replace_the_defaults(tmp_path):
    from mfassl.checkpoints import CheckpointSaver
    from mfassl.engine import TensorBoardHandler

    method = tiny_method("dino")
    loader = DataLoader(DATA, batch_size=4, shuffle=True)
    saver = CheckpointSaver(tmp_path / "ck", n_saved=1)
    trainer = create_trainer(method, create_optimizer(method), len(loader), 2, batch_size=4, output_dir=None,
                             handlers=[saver, TensorBoardHandler(tmp_path / "tb", enabled=False)])
    trainer.run(loader, max_epochs=2)
    assert _ckpts(tmp_path / "ck") == ["checkpoint_8.pt"] and not (tmp_path / "tb").exists()
    with pytest.raises(TypeError, match=r"handlers\[0\]"):
        create_trainer(method, create_optimizer(method), len(loader), 2, handlers=[object()])
    with pytest.raises(ValueError, match="n_saved"):
        CheckpointSaver(tmp_path, n_saved=0)


@pytest.mark.parametrize("deterministic", [False, True])
def test_distributed_sampler_gets_each_epoch(deterministic):
    """The epoch reaches a DistributedSampler, also behind the batch sampler DeterministicEngine builds."""
    from ignite.engine import DeterministicEngine, Engine, Events
    from torch.utils.data import DataLoader, DistributedSampler

    from mfassl.handlers import set_sampler_epoch

    sampler = DistributedSampler(list(range(16)), num_replicas=2, rank=0, shuffle=True, seed=3)
    loader = DataLoader(list(range(16)), batch_size=4, sampler=sampler)
    seen: list[list[int]] = []
    engine = (DeterministicEngine if deterministic else Engine)(lambda e, b: seen.append(b.tolist()))
    engine.add_event_handler(Events.EPOCH_STARTED, set_sampler_epoch)
    engine.run(loader, max_epochs=3)
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        expected.append(sorted(order))
    assert [sorted(sum(seen[2 * e:2 * e + 2], [])) for e in range(3)] == expected
    assert len({tuple(x) for x in expected}) > 1  # the epochs do read different halves


def test_monai_handlers_read_the_decollated_output_lr_inferer_and_epoch_metrics(tmp_path):
    """decollate=True gives MONAI's output form: from_engine(["loss"], first=True) is the loss (before: a tuple,
    which MLFlowHandler's float() refused); the inferer runs the forward; EpochMetrics publishes epoch means."""
    from monai.handlers import from_engine
    from monai.inferers import SimpleInferer

    from mfassl.engine import EpochMetrics, step_record

    class CountingInferer(SimpleInferer):
        calls = 0

        def __call__(self, inputs, network, *args, **kwargs):
            CountingInferer.calls += 1
            return super().__call__(inputs, network, *args, **kwargs)

    method = tiny_method("dino")
    loader = DataLoader(DATA, batch_size=4)
    optimizer = create_optimizer(method)
    trainer = create_trainer(method, optimizer, len(loader), 2, batch_size=4, warmup_epochs=1, progress=False,
                             handlers=[EpochMetrics()], inferer=CountingInferer(), decollate=True)
    seen, means = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(
        (from_engine(["loss"], first=True)(e.state.output), step_record(e.state.output))))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: means.append(dict(e.state.metrics)))
    trainer.run(loader, max_epochs=2)
    assert trainer.optimizer is optimizer and CountingInferer.calls == 8
    assert isinstance(trainer.state.output, list) and len(trainer.state.output) == 1
    for loss, record in seen:
        assert isinstance(loss, float) and loss == record["loss"]
    for epoch, m in enumerate(means):
        rows = [r for _, r in seen[4 * epoch: 4 * epoch + 4]]
        for key in ("loss", "gate_mean", "l_eq", "lr"):
            assert m[key] == pytest.approx(sum(r[key] for r in rows) / 4), key
        assert "epoch_float" not in m
    assert step_record(None) == {} and step_record({"loss": 1.0}) == {"loss": 1.0}
