"""The reflection benchmark, reduced (tiny MFA-ViT, one seed, five methods): the pipeline runs end to end from
the same weights and views, writes its tables, results and figure; its helpers agree with hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench_loader import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("reflection")


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("reflection")
    assert bench.main(["--tiny", "--out", str(out), "--threads", "2"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_method_of_the_issue_is_defined(bench):
    assert list(bench.METHODS) == ["random_init", "flip_baseline", "noflip_baseline", "essl_flip", "mfassl",
                                   "mfassl_noflip", "mfassl_gate_mean", "mfassl_centre_axis", "mfassl_axis_err_2deg",
                                   "mfassl_axis_err_5deg"]
    assert bench.METHODS["essl_flip"]["mirror"] is False and bench.METHODS["essl_flip"]["flip_prediction"] > 0
    assert bench.METHODS["mfassl_noflip"]["flip_prob"] == 0.0 and bench.METHODS["noflip_baseline"]["flip_prob"] == 0.0
    assert bench.PUBLISHED["image_size"] == 224 and bench.PUBLISHED["patch_size"] == 16
    assert bench.PUBLISHED["embed_dim"] == 384 and bench.PUBLISHED["depth"] == 12  # ViT-S/16


def test_rotated_axes_are_rotated_by_exactly_the_error(bench):
    from mfassl.geometry import SymmetryAxis2D

    axes = torch.tensor([[0.0, 1.0, 23.5], [0.1, 0.995, 20.0]])
    axes[1, :2] = axes[1, :2] / axes[1, :2].norm()
    for deg in (2.0, 5.0):
        rot = bench.rotate_axes(axes, deg, 48, seed=0)
        for a, b in zip(axes.numpy(), rot.numpy()):
            la, lb = SymmetryAxis2D(normal=a[:2], offset=float(a[2])), SymmetryAxis2D(normal=b[:2], offset=float(b[2]))
            assert la.angle_to(lb) == pytest.approx(deg, abs=1e-4)
            c = np.full(2, 23.5)
            p = c - (a[:2] @ c - a[2]) * a[:2]  # the pivot: the line's point nearest the centre stays on it
            assert float(b[:2] @ p - b[2]) == pytest.approx(0.0, abs=1e-5)


def test_truth_axis_and_flipped_axes(bench):
    row = {"midline_normal_xy_0": "1.0", "midline_normal_xy_1": "0.0", "midline_offset_px": "127.5"}
    assert bench.truth_axis(row, 64) == pytest.approx([0.0, 1.0, 31.5])  # the centre column of 256 -> of 64
    axes = torch.tensor([[0.05, 0.99875, 20.3]])
    once = bench.flipped_axes(axes, 48)
    assert torch.allclose(bench.flipped_axes(once, 48), axes, atol=1e-5)
    assert float(once[0, 1]) > 0 and float(once[0, 2]) == pytest.approx(0.99875 * 47 - 20.3, abs=1e-4)


def test_stratified_folds_partition_and_balance(bench):
    y = np.array([0] * 9 + [1] * 6)
    folds = bench.stratified_folds(y, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(15))
    assert [int(y[f].sum()) for f in folds] == [2, 2, 2] and [len(f) for f in folds] == [5, 5, 5]


def test_seed_pooled_metrics_by_hand(bench):
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.1, 0.6], [0.4, 0.4], [0.35, 0.7], [0.8, 0.9]])  # (N, S): two seeds
    pf = 1.0 - p
    assert bench.seed_mean("accuracy", "presence")(p, pf, y) == pytest.approx((0.75 + 0.75) / 2)
    assert bench.seed_mean("auroc", "presence")(p, pf, y) == pytest.approx((0.75 + 1.0) / 2)
    assert bench.seed_mean("brier", "presence")(p, pf, y) == pytest.approx(
        np.mean([np.mean((p[:, s] - y) ** 2) for s in range(2)]))
    # side: the mirror image's prediction must swap; pf = 1 - p swaps every one of them
    assert bench.seed_mean("flip_consistency", "side")(p, pf, y) == pytest.approx(1.0)
    assert bench.seed_mean_diff("accuracy", "presence")(p, pf, p, pf, y) == 0.0
    rows = [{"task": "side", "readout": "global", "diff": {"flip_baseline": {"accuracy": (0.0, -0.1, 0.1)}}},
            {"task": "side", "readout": "global", "diff": {"flip_baseline": {"accuracy": (0.0, -0.2, 0.2)}}}]
    assert bench.detectable_difference(rows, "side", "global") == pytest.approx(2.8 * 0.3 / 3.92)


def test_tiny_run_end_to_end(bench, tiny_run):
    out, res = tiny_run
    methods = res["config"]["methods"]
    assert len(res["rows"]) == len(methods) * 2 * 2 and res["config"]["seeds"] == [0]
    for r in res["rows"]:
        for k in ("accuracy", "ece", "brier", "flip_consistency"):
            est, lo, hi = r[k]
            assert 0.0 <= est <= 1.0 and (math.isnan(lo) or lo <= hi)
        assert set(r["subsets"]) <= {"left", "right", "none", "small", "large"}
        if r["task"] == "presence":
            assert {"left", "right", "none"} <= set(r["subsets"]) and sum(v[3] for k, v in r["subsets"].items()
                                                                           if k in ("left", "right", "none")) == r["n"]
        assert ("flip_baseline" in r["diff"]) == (r["method"] != "flip_baseline")
    # the same initial weights and the same views: every trained method starts from the same base loss
    first = {m: res["train"][m][0]["first"]["base"] for m in ("flip_baseline", "essl_flip", "mfassl")}
    assert first["flip_baseline"] == pytest.approx(first["essl_flip"], rel=1e-6)
    assert first["flip_baseline"] == pytest.approx(first["mfassl"], rel=1e-6)
    assert "flip_loss" in res["train"]["essl_flip"][0]["last"] and "flip_loss" not in res["train"]["mfassl"][0]["last"]
    assert res["data"]["n_images"] == 18 and res["data"]["n_lesion"] == 12
    table = (out / "table.md").read_text()
    assert all(m in table for m in methods) and "Smallest accuracy difference" in table
    png = out / "reflection.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_merge_pools_the_seeds_of_several_runs(bench, tiny_run, tmp_path):
    out, res = tiny_run
    merged = bench.merge([out, out], tmp_path / "merged", n_boot=20)
    assert merged["config"]["seeds"] == [0, 0] and len(merged["rows"]) == len(res["rows"])
    for a, b in zip(res["rows"], merged["rows"]):
        assert (a["method"], a["readout"], a["task"]) == (b["method"], b["readout"], b["task"]) and b["seeds"] == 2
        assert b["accuracy"][0] == pytest.approx(a["accuracy"][0]) and b["brier"][0] == pytest.approx(a["brier"][0])
    assert (tmp_path / "merged" / "table.md").is_file() and (tmp_path / "merged" / "probs.npz").is_file()
