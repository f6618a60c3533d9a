"""A disk that fills up at checkpoint time: the training command says ``no space left on <checkpoint>`` (not
torch's ``unexpected pos ...``), keeps the last good checkpoint and no temporary file, and ``--resume auto``
goes on from that checkpoint. Run through ``python -m mfassl_faces pretrain`` (the smallest command that trains
with :class:`mfassl.checkpoints.CheckpointSaver`), the full disk simulated in the process: once one checkpoint
lies in the folder, every write to another checkpoint file fails with ENOSPC after a few kilobytes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mfassl_faces.demo import build_demo_data

from cli_runner import run_main

FULL_DISK = r"""
import builtins, errno, os, re, runpy, sys

CKPT = re.compile(r"checkpoint_\d+\.pt")
real_open, real_fdopen = builtins.open, os.fdopen


class Full:
    '''A file on a disk with 4 KiB left: a write past that raises ENOSPC, as the system call does.'''

    def __init__(self, fh):
        self.fh, self.room = fh, 4096

    def write(self, data):
        n = len(memoryview(data))
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def fill(fh, name):
    folder, base = os.path.split(os.fspath(name))
    taken = any(CKPT.fullmatch(f) for f in os.listdir(folder or "."))
    return Full(fh) if CKPT.search(base) and taken else fh


def open_(file, mode="r", *args, **kwargs):
    fh = real_open(file, mode, *args, **kwargs)
    return fill(fh, file) if isinstance(file, (str, os.PathLike)) and "w" in mode else fh


def fdopen(fd, mode="r", *args, **kwargs):
    fh = real_fdopen(fd, mode, *args, **kwargs)
    return fill(fh, os.readlink(f"/proc/self/fd/{fd}")) if "w" in mode else fh


builtins.open, os.fdopen = open_, fdopen
sys.argv = ["mfassl_faces", *sys.argv[1:]]
runpy.run_module("mfassl_faces", run_name="__main__", alter_sys=True)
"""

TINY = ["--size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "4",
        "--batch-size", "4", "--objective", "mocov3", "--no-progress", "--epochs", "2"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the simulated disk reads /proc/self/fd")
def test_full_disk_at_checkpoint_time_keeps_the_last_good_one_and_the_run_resumes(tmp_path):
    demo = build_demo_data(tmp_path / "demo", n_per_face=2, seed=1, include_astronaut=False, max_side=160)
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(demo), "--out", str(out), *TINY]
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, *args], capture_output=True, text=True, timeout=600)
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
