"""The reduced laterality experiment (tiny MFA-ViT, one seed): the pipeline runs end to end and writes its table,
results and figure; the metric helpers agree with hand computations."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "laterality.py"


@pytest.fixture(scope="module")
def lat():
    spec = importlib.util.spec_from_file_location("bench_laterality", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_laterality"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_auroc_and_ece_by_hand(lat):
    y = np.array([0, 0, 1, 1])
    assert lat.auroc(np.array([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    assert lat.auroc(np.array([0.5, 0.5, 0.5, 0.5]), y) == pytest.approx(0.5)
    assert np.isnan(lat.auroc(np.array([0.2, 0.3]), np.array([1, 1])))
    # all predictions p = 0.9 for class 1, half right: confidence 0.9, accuracy 0.5 -> ECE 0.4
    assert lat.ece(np.full(4, 0.9), y) == pytest.approx(0.4)
    assert lat.ece(np.array([1.0, 0.0]), np.array([1, 0])) == pytest.approx(0.0)


def test_flip_consistency_semantics(lat):
    y = np.array([0, 1, 0, 1])
    p = np.array([0.2, 0.8, 0.3, 0.9])
    swapped = 1 - p
    side = lat.task_metrics(p, swapped, y, "side")
    presence = lat.task_metrics(p, p, y, "presence")
    assert side["flip_consistency"] == 1.0 and presence["flip_consistency"] == 1.0
    assert lat.task_metrics(p, p, y, "side")["flip_consistency"] == 0.0
    stats = lat.pooled_bootstrap(p[None], swapped[None], y, "side", n_boot=20)
    assert stats["accuracy"][0] == 1.0 and stats["accuracy"][1] <= 1.0 <= stats["accuracy"][2] + 1e-9


@pytest.mark.slow
def test_reduced_experiment_writes_the_table(lat, tmp_path):
    out = tmp_path / "lat"
    assert lat.main(["--tiny", "--seeds", "0", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    for method in lat.METHODS:
        for task in lat.TASKS:
            assert f"| {task} | global | {method} |" in table and f"| {task} | paired | {method} |" in table
    res = json.loads((out / "results.json").read_text())
    assert len(res["rows"]) == len(lat.METHODS) * len(lat.TASKS) * len(lat.READOUTS)
    for row in res["rows"]:
        for k in lat.METRICS:
            mean, lo, hi = row[k]
            assert 0.0 <= mean <= 1.0 or np.isnan(mean)
            assert lo <= hi
        assert len(row["per_seed"]) == 1
    assert res["data"]["n_lesion"] == 16 and res["data"]["n_images"] == 24
    assert (out / "laterality.png").stat().st_size > 1000


def test_flipped_axes(lat):
    import torch

    axes = torch.tensor([[0.0, 1.0, 10.0], [0.0, 1.0, 15.5], [0.1, 0.995, 12.0]])
    fl = lat.flipped_axes(axes, 32)
    torch.testing.assert_close(fl[0], torch.tensor([0.0, 1.0, 21.0]))
    torch.testing.assert_close(fl[1], axes[1])  # the centre line of a 32-wide image
    torch.testing.assert_close(lat.flipped_axes(fl, 32), axes / axes[:, :2].norm(dim=1, keepdim=True), atol=1e-5,
                               rtol=0)
