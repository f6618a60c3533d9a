import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader, TensorDataset

from mfassl.engine import create_optimizer, create_trainer, find_last_checkpoint, load_checkpoint

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


def test_two_process_gloo_run_trains(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           "--master_port=29533", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["in_sync"] and r["steps"] == 4 for r in results)
    assert all(all(v == v for v in r["losses"]) for r in results)
    assert find_last_checkpoint(tmp_path / "checkpoints") is not None


def test_prepare_batch_reads_the_axis_keys():
    from mfassl.engine import default_prepare_batch

    img, row = torch.rand(2, 1, 8, 8), torch.tensor([[0.0, 1.0, 3.5]] * 2)
    for batch in ({"image": img, "axis": row}, {"image": img, "image_axis": row}, (img, row)):
        images, axes = default_prepare_batch(batch, "cpu")
        assert torch.equal(images, img) and torch.equal(axes, row)
    assert default_prepare_batch(img, "cpu")[1] is None
