"""The commands each bundle README documents, run in the README's order after its demo training.

The commands are read from the README itself (the first code block under each named heading), so a README that
documents a command that fails fails here. They run in a copy of the bundle folder, as a user runs them (from the
bundle folder for the pretraining bundles, from a repository root for the segmentation bundle), through MONAI's
command line: each argument list is parsed with ``fire`` exactly as ``python -m monai.bundle`` parses it, in the
test's interpreter (:func:`cli_runner.run_monai_bundle_commands`: the torch and MONAI import is paid once). Tiny network
sizes and short schedules are appended as ``--key value`` strings, as a user would for a CPU run; placeholders
for real data are pointed at the demo data.

Before, the demo wrote its smaller encoder to ``models/model.pt`` and the documented evaluate, inference and
``ckpt_export`` commands failed on it ("size mismatch", "Missing key(s)"; ``inference.json`` with ``demo.json``:
``KeyError 'objective_args'``).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from bundle_utils import BUNDLES, TINY, cli_args
from cli_runner import run_monai_bundle_commands
from mfassl_medical.label_app import TINY_NETWORK

EVAL_TINY = {"n_bootstrap": 20, "linear_epochs": 5, "finetune_epochs": 1, "finetune_batch_size": 4, "knn_k": 3,
             "shift_batch": 2, "eval_modes": ["knn", "linear"], "max_train": 6, "max_test": 4}


def readme_commands(readme: Path, heading: str) -> list[list[str]]:
    """The ``python -m monai.bundle ...`` commands of the first code block under ``### heading``."""
    text = readme.read_text()
    assert f"### {heading}\n" in text, f"{readme}: no section {heading!r}"
    section = text.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    block = section.split("```", 2)[1].split("\n", 1)[1]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[3:] for line in lines if line.strip().startswith("python -m monai.bundle ")]


def run_commands(commands: list[list[str]], cwd: Path) -> str:
    proc = run_monai_bundle_commands(commands, cwd=cwd)
    assert proc.returncode == 0 and "ALL-DONE" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def copy_bundle(name: str, dest: Path) -> Path:
    shutil.copytree(BUNDLES / name, dest, ignore=shutil.ignore_patterns(
        "models", "eval", "runs", "inference", "predictions", "logs", "__pycache__"))
    (dest / "models").mkdir()
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_pretraining_readme_commands_after_the_demo(tmp_path, name):
    readme = BUNDLES / name / "docs" / "README.md"
    train = readme_commands(readme, "Train on the demo data")
    after = readme_commands(readme, "Evaluate, infer and export the demo encoder")
    assert len(train) == 1 and [c[0] for c in after] == ["run", "run", "ckpt_export"]
    # the network's keys, as the training got them (its sizes: network_def#..., roi_size of the 3D ViT)
    net = {k: v for k, v in TINY[name].items() if k.startswith("network_def#") or k.endswith("_size")}
    commands = [train[0] + cli_args({**TINY[name], "epochs": 1}),
                after[0] + cli_args({**TINY[name], **EVAL_TINY}),
                after[1] + cli_args(TINY[name]),
                after[2] + cli_args(net)]
    root = copy_bundle(name, tmp_path / name)
    run_commands(commands, root)

    # the demo's encoder went beside the full-size one's place, not into it
    assert (root / "models" / "demo" / "model.pt").is_file() and not (root / "models" / "model.pt").exists()
    report = json.loads((root / "eval" / "report.json").read_text())
    assert set(report["readouts"]) == {"knn", "linear"} and report["n_test"] > 0
    inference = json.loads((root / "inference" / "inference.json").read_text())
    assert inference["n"] > 0 and inference["embedding_dim"] == TINY[name]["network_def#embed_dim"]
    import torch

    exported = torch.jit.load(str(root / "models" / "demo" / "model.ts"))
    shape = [1, 4, 32, 32, 32] if "brats" in name else [1, 1, 32, 32]
    assert exported(torch.rand(*shape)).shape == (1, TINY[name]["network_def#embed_dim"])


def test_make_demo_prints_the_readme_commands():
    """``python -m mfassl_medical demo`` ends with the same follow-up commands as the BraTS README."""
    from mfassl_medical.demo import bundle_dir, follow_up_commands

    readme = BUNDLES / "mfassl_brats_pretrain" / "docs" / "README.md"
    printed = [shlex.split(c)[3:] for c in follow_up_commands(bundle_dir()) if c.startswith("python ")]
    assert printed == readme_commands(readme, "Evaluate, infer and export the demo encoder")


@pytest.mark.slow
def test_segmentation_readme_commands_after_its_demo_training(tmp_path):
    name = "mfassl_brats_segmentation"
    readme = BUNDLES / name / "docs" / "README.md"
    commands = [*readme_commands(readme, "Train on the demo data"), *readme_commands(readme, "Evaluate"),
                *readme_commands(readme, "Inference"), *readme_commands(readme, "Export to TorchScript")]
    assert [c[0] for c in commands] == ["run", "run", "run", "ckpt_export"]
    # the inference example's folder of BraTS cases becomes the demo data's (the README's demo variant)
    from mfassl_medical.demo_data import build_demo_data

    demo_cases = tmp_path / "cases"  # one of the demo cases, to keep the run short
    demo_cases.mkdir()
    for case in sorted(p for p in build_demo_data().brats.iterdir() if p.is_dir())[:1]:
        (demo_cases / case.name).symlink_to(case, target_is_directory=True)
    inference = commands[2]
    inference[inference.index("--dataset_dir") + 1] = str(demo_cases)
    tiny = cli_args(TINY_NETWORK)
    commands = [commands[0] + tiny + cli_args({"epochs": 1, "epoch_length": 1, "max_cases": 4}),
                commands[1] + tiny + cli_args({"max_cases": 4}), inference + tiny, commands[3] + tiny]
    repo = tmp_path / "repo"  # a repository root: the commands name bundles/mfassl_brats_segmentation
    root = copy_bundle(name, repo / "bundles" / name)
    run_commands(commands, repo)

    assert (root / "models" / "model.pt").is_file()
    assert "val_mean_dice" in (root / "eval" / "metrics.csv").read_text()
    written = sorted((root / "predictions").glob("*_seg.nii.gz"))
    assert len(written) == 1
    import torch

    exported = torch.jit.load(str(root / "models" / "model.ts"))
    assert exported(torch.rand(1, 4, 64, 64, 64)).shape == (1, 3, 64, 64, 64)
