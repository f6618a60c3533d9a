"""Resuming a pretraining bundle (``--resume_from auto``): the whole history, pruned checkpoints, small encoder
files, and changed run settings refused (or forced) through the real command line."""

from __future__ import annotations

import json

import pytest
import torch

from bundle_utils import BUNDLES, TINY, run_bundle
from cli_runner import run_monai_bundle

NAME = "mfassl_chexpert_pretrain"  # 8 demo images, batch 4: 2 iterations per epoch


def _history(run_dir):
    return json.loads((run_dir / "history.json").read_text())


def _ckpts(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint_*.pt"))


@pytest.mark.slow
def test_history_report_and_checkpoints_across_a_resume(tmp_path):
    full_report = run_bundle(NAME, tmp_path / "full", epochs=2, n_saved=1)
    full = _history(tmp_path / "full")
    cut_dir = tmp_path / "cut"
    run_bundle(NAME, cut_dir, epochs=1, schedule_epochs=2, n_saved=1)
    # the history of a process killed after the checkpoint holds a row past it: never duplicated
    rows = _history(cut_dir)
    (cut_dir / "history.json").write_text(json.dumps(rows + [{**rows[-1], "iteration": 3.0, "loss": 99.0}]))
    report = run_bundle(NAME, cut_dir, epochs=2, resume_from="auto", n_saved=1)
    resumed = _history(cut_dir)
    assert [r["iteration"] for r in resumed] == [r["iteration"] for r in full] == [1.0, 2.0, 3.0, 4.0]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], abs=1e-5)
    for key in ("iterations", "epochs", "mfa_on_iterations"):
        assert report[key] == full_report[key], key
    for key in ("loss_first", "loss_last", "loss_last_epoch_mean"):
        assert report[key] == pytest.approx(full_report[key], abs=1e-5), key
    assert report["loss_last_epoch_mean"] == pytest.approx((full[2]["loss"] + full[3]["loss"]) / 2, abs=1e-6)
    # n_saved full checkpoints (the resumed run pruned the one it found), a small encoder file without duplicates
    assert _ckpts(cut_dir) == ["checkpoint_4.pt"]
    model = cut_dir / "models" / "model.pt"
    state = torch.load(model, weights_only=True)
    assert not any(k.startswith("blocks.") for k in state) and any(k.startswith("encoder.blocks.") for k in state)
    assert model.stat().st_size * 3 < (cut_dir / "checkpoints" / "checkpoint_4.pt").stat().st_size


def _cli(out, *extra):
    root = BUNDLES / NAME
    args = ["run", "--config_file", str(root / "configs" / "train.json"),
            "--bundle_root", str(root), "--output_dir", str(out), "--model_file", str(out / "models" / "model.pt")]
    for k, v in TINY[NAME].items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return run_monai_bundle(*args, *extra)


@pytest.mark.slow
def test_changed_settings_are_refused_then_forced_from_the_command_line(tmp_path):
    run_bundle(NAME, tmp_path, epochs=1)
    proc = _cli(tmp_path, "--epochs", "2", "--batch_size", "2", "--resume_from", "auto")
    assert proc.returncode != 0
    err = proc.stdout[-4000:] + proc.stderr[-6000:]
    assert "refusing to resume from" in err and "checkpoint_2.pt" in err
    assert "batch_size: 4 in the checkpoint, 2 now" in err and "max_epochs: 1 in the checkpoint, 2 now" in err
    assert _ckpts(tmp_path) == ["checkpoint_2.pt"] and len(_history(tmp_path)) == 2  # nothing touched
    # extending the finished run on purpose: the string 'true' forces it, the history grows
    proc = _cli(tmp_path, "--epochs", "2", "--resume_from", "auto", "--resume_force", "true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["iteration"] for r in _history(tmp_path)] == [1.0, 2.0, 3.0, 4.0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["epochs"] == 2 and report["iterations"] == 4
    assert _ckpts(tmp_path) == ["checkpoint_2.pt", "checkpoint_4.pt"]
