"""A disk that fills up at checkpoint time: the training command says ``no space left on <checkpoint>`` (not
torch's ``unexpected pos ...``), keeps the last good checkpoint and no temporary file, and ``--resume auto``
goes on from that checkpoint. Run through the command line of ``python -m mfassl_faces pretrain`` (the smallest command
that trains with :class:`mfassl.checkpoints.CheckpointSaver`) in the test's process, the full disk simulated there:
once one checkpoint lies in the folder, every write to another checkpoint file fails with ENOSPC after a few
kilobytes."""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import sys
from typing import IO

import pytest
import torch

from mfassl_faces.demo import build_demo_data

from cli_runner import run_main

CKPT = re.compile(r"checkpoint_\d+\.pt")


class _Full:
    """A file on a disk with 4 KiB left: a write past that raises ENOSPC, as the system call does."""

    def __init__(self, fh: IO) -> None:
        self.fh, self.room = fh, 4096

    def write(self, data) -> int:
        n = len(memoryview(data))
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.fh.write(data)

    def __enter__(self) -> "_Full":
        return self

    def __exit__(self, *exc) -> object:
        return self.fh.__exit__(*exc)

    def __getattr__(self, name: str) -> object:
        return getattr(self.fh, name)


def fill_the_disk_after_one_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, a file opened for writing whose name is a checkpoint's, in a folder that already holds one,
    takes 4 KiB and then raises ENOSPC (``open`` and ``os.fdopen``, which the atomic writer uses)."""
    real_open, real_fdopen = builtins.open, os.fdopen

    def fill(fh: IO, name: str | os.PathLike) -> IO:
        folder, base = os.path.split(os.fspath(name))
        taken = any(CKPT.fullmatch(f) for f in os.listdir(folder or "."))
        return _Full(fh) if CKPT.search(base) and taken else fh

    def open_(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return fill(fh, file) if isinstance(file, (str, os.PathLike)) and "w" in mode else fh

    def fdopen(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        return fill(fh, os.readlink(f"/proc/self/fd/{fd}")) if "w" in mode else fh

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "fdopen", fdopen)


TINY = ["--size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "4",
        "--batch-size", "4", "--objective", "mocov3", "--no-progress", "--epochs", "2"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the simulated disk reads /proc/self/fd")
def test_full_disk_at_checkpoint_time_keeps_the_last_good_one_and_the_run_resumes(tmp_path, monkeypatch):
    demo = build_demo_data(tmp_path / "demo", n_per_face=2, seed=1, include_astronaut=False, max_side=160)
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(demo), "--out", str(out), *TINY]
    with monkeypatch.context() as full:
        fill_the_disk_after_one_checkpoint(full)
        proc = run_main("mfassl_faces", *args)
    ckpts = out / "checkpoints"
    assert proc.returncode == 1, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: no space left on {ckpts / 'checkpoint_2.pt'}"), proc.stderr
    assert "unexpected pos" not in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint_1.pt"]  # the last good one, no temporary file
    assert torch.load(ckpts / "checkpoint_1.pt", weights_only=True)["trainer"]["iteration"] == 1
    # space is back: the run goes on from the last good checkpoint
    proc = run_main("mfassl_faces", *args, "--resume", "auto", "-v")
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from {ckpts / 'checkpoint_1.pt'} at epoch 1, iteration 1" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["epochs"], summary["iterations"]) == (2, 2)
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint_1.pt", "checkpoint_2.pt"]
