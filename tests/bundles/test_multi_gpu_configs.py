"""The bundles' ``configs/multi_gpu_*.json``, as the zoo's bundles have them, under ``torchrun`` with two CPU
processes (gloo).

One launch (``tests/bundle_ranks.py``) runs three command lines in turn in each rank, in one process group: the
BraTS pretraining's multi-GPU training, the segmentation bundle's multi-GPU training and the evaluation of its
weights (``multi_gpu_evaluate.json``). Each bundle's ``finalize`` leaves the group to the next command, whose
``initialize`` finds it, so the ranks' start-up (torch and MONAI imports) is paid once for the three runs; each
test below checks what its bundle wrote.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_utils import BUNDLES, TINY, cli_args
from mfassl_medical.label_app import TINY_NETWORK

PRETRAIN = "mfassl_brats_pretrain"
SEGMENTATION = "mfassl_brats_segmentation"


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, free_port_factory) -> dict:
    """The launch's ``CompletedProcess`` and the two bundles' output folders."""
    tmp = tmp_path_factory.mktemp("multi_gpu")
    pre_root = BUNDLES / PRETRAIN
    pre_out = tmp / "pretrain"
    pretrain = ["run", "--config_file", json.dumps([str(pre_root / "configs" / c) for c in
                                                    ("train.json", "multi_gpu_train.json")]),
                "--bundle_root", str(pre_root), "--output_dir", str(pre_out), "--epochs", "1",
                "--model_file", str(pre_out / "models" / "model.pt"), *cli_args(TINY[PRETRAIN])]
    seg_root = tmp / "segmentation"  # a copy of the bundle folder, as --bundle_root names it in the README
    shutil.copytree(BUNDLES / SEGMENTATION, seg_root,
                    ignore=shutil.ignore_patterns("models", "eval", "logs", "predictions", "__pycache__"))
    configs = seg_root / "configs"
    # cache_rate 0: the one training step reads one case per rank instead of caching every training case first
    common = ["run", "--bundle_root", str(seg_root), "--max_cases", "8", "--cache_rate", "0",
              *cli_args(TINY_NETWORK)]
    seg_train = common + ["--config_file", json.dumps([str(configs / c) for c in
                                                       ("train.json", "multi_gpu_train.json")]),
                          "--epochs", "1", "--epoch_length", "1"]
    seg_evaluate = common + ["--config_file", json.dumps([str(configs / c) for c in
                                                          ("train.json", "evaluate.json", "multi_gpu_evaluate.json")])]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port_factory()}", str(Path(__file__).parents[1] / "bundle_ranks.py"),
           json.dumps(pretrain), json.dumps(seg_train), json.dumps(seg_evaluate)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return {"res": res, "pretrain": pre_out, "segmentation": seg_root}


def _succeeded(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.slow
def test_multi_gpu_config_runs_two_gloo_processes(launch: dict) -> None:
    """The pretraining bundle: 6 cases, 2 processes, batch 2 each: 1 step per epoch per process; rank 0 saves."""
    _succeeded(launch["res"])
    out = launch["pretrain"]
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"] == 1
    assert list((out / "checkpoints").glob("checkpoint_*.pt"))
    assert (out / "models" / "model.pt").is_file()  # rank 0 saved the encoder


@pytest.mark.slow
def test_multi_gpu_train_and_evaluate_configs_run_two_gloo_processes(launch: dict) -> None:
    """The segmentation bundle: rank 0 alone writes the checkpoints and the metrics files; the evaluation gathers
    both ranks' validation cases."""
    res = launch["res"]
    _succeeded(res)
    assert res.stdout.count("Train completed") + res.stderr.count("Train completed") == 1  # rank 0's log only
    root = launch["segmentation"]
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the DDP wrapper is not in the saved keys
    with open(root / "eval" / "dice_wt_raw.csv") as f:
        assert len(list(csv.reader(f))) == 3  # header + both validation cases, gathered from the two ranks
