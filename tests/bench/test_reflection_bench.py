"""The reflection benchmark, reduced (tiny MFA-ViT, one seed): the units run end to end from the same weights and
views, write one result file each, are skipped when done, and pool into tables, curves and figures; the floors,
the probe and the statistics agree with hand computations."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from bench_loader import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("reflection")


@pytest.fixture(scope="module")
def report_mod(bench):
    import sys

    return sys.modules["reflection_report"]


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    """The reduced run, its probe with one strength (``C = 1``) instead of choosing from 7 by inner cross-validation
    (the fits were most of its time; the strengths are part of the run key, so these results never pool with a
    real run's; the choice is :func:`test_probe_chooses_its_strength_by_inner_cross_validation`'s)."""
    out = tmp_path_factory.mktemp("reflection")
    mp = pytest.MonkeyPatch()
    mp.setattr(bench, "PROBE_CS", (1.0,))
    quiet = logging.getLogger("mfassl")
    level = quiet.level
    try:
        res = _run_tiny(bench, out)
    finally:
        quiet.setLevel(level)  # the benchmark's main quiets the trainer's logging
    yield out, res
    mp.undo()


def _run_tiny(bench, out):
    assert bench.main(["--tiny", "--out", str(out), "--results", str(out / "results"), "--threads", str(torch.get_num_threads())]) == 0
    return json.loads((out / "results.json").read_text())


def test_every_method_of_the_issue_is_defined(bench):
    assert list(bench.METHODS) == ["random_init", "flip_baseline", "noflip_baseline", "essl_flip", "mfassl",
                                   "mfassl_noflip", "mfassl_gate_mean", "mfassl_centre_axis", "mfassl_axis_err_2deg",
                                   "mfassl_axis_err_5deg"]
    assert bench.METHODS["essl_flip"]["mirror"] is False and bench.METHODS["essl_flip"]["flip_prediction"] > 0
    assert bench.METHODS["mfassl_noflip"]["flip_prob"] == 0.0 and bench.METHODS["noflip_baseline"]["flip_prob"] == 0.0
    assert set(bench.REFERENCES) == {"pixels", "supervised"}
    assert {v["objective"] for v in bench.OBJECTIVE_RUNS.values()} == {"dino", "mixedae", "dagman"}
    assert bench.PUBLISHED["image_size"] == 224 and bench.PUBLISHED["patch_size"] == 16
    assert bench.PUBLISHED["embed_dim"] == 384 and bench.PUBLISHED["depth"] == 12  # ViT-S/16
    cfg = bench.Config()  # the learning regime: 480 graded images, 2,400 steps
    assert (cfg.n_images, cfg.steps, cfg.findings, cfg.batch_size) == (480, 2400, "graded", 64)


def test_plan_runs_core_seeds_first_then_ablations(bench):
    cfg = bench.Config(seeds=(0, 1, 2, 3), ablation_seeds=(0,), objective_seeds=(0,))
    units = bench.plan(cfg)
    assert units[: len(bench.CORE)] == [(m, 0) for m in bench.CORE]
    assert len(units) == len(set(units)) == 4 * len(bench.CORE) + len(bench.ABLATIONS) + len(bench.OBJECTIVE_RUNS)
    assert units.index(("mfassl_noflip", 0)) < units.index(("dino_flip", 0)) < units.index(("mfassl", 3))
    only = bench.plan(bench.Config(seeds=(5,), methods=("mfassl",)))
    assert only == [("mfassl", 5)]
    # the run key ignores which units run and how the report is pooled, not the sizes
    assert bench.run_key(cfg) == bench.run_key(bench.Config(seeds=(9,), n_boot=10))
    assert bench.run_key(cfg) != bench.run_key(bench.Config(steps=10))


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


def test_truth_axis_flipped_and_scaled_axes(bench):
    row = {"midline_normal_xy_0": "1.0", "midline_normal_xy_1": "0.0", "midline_offset_px": "127.5"}
    assert bench.truth_axis(row, 64) == pytest.approx([0.0, 1.0, 31.5])  # the centre column of 256 -> of 64
    axes = torch.tensor([[0.05, 0.99875, 20.3]])
    once = bench.flipped_axes(axes, 48)
    assert torch.allclose(bench.flipped_axes(once, 48), axes, atol=1e-5)
    assert float(once[0, 1]) > 0 and float(once[0, 2]) == pytest.approx(0.99875 * 47 - 20.3, abs=1e-4)
    centre = torch.tensor([[0.0, 1.0, 23.5]])  # the centre column of 48 px is the centre column of 64 px
    assert bench.scaled_axes(centre, 64 / 48)[0, 2] == pytest.approx(31.5)


def test_folds_partition_and_balance_every_side(bench):
    side = np.array(["none", "left", "right"] * 10)
    folds = bench.fold_ids({"side": side}, 5, seed=0)
    assert sorted(np.unique(folds).tolist()) == [0, 1, 2, 3, 4]
    for j in range(5):
        assert [int((side[folds == j] == s).sum()) for s in ("none", "left", "right")] == [2, 2, 2]
    assert (bench.fold_ids({"side": side}, 5, seed=1) != folds).any() and (bench.fold_ids({"side": side}, 5, 0) == folds).all()


@pytest.mark.parametrize("method", ["dino_flip", "mixedae_flip", "dagman_flip"])
def test_objective_runs_train_and_reach_their_learning_checks(bench, method):
    """The objective runs (the flip baseline on DINO, MixedAE, DAGMaN) train and record their learning checks at
    the checkpoints. DAGMaN's MFA-Swin trains on the images resized to a multiple of 32: its views are that size
    (views of the configured 24 px stopped the run: "divisible by the final stride")."""
    from mfassl.geometry import SymmetryAxis2D

    spec = bench.OBJECTIVE_RUNS[method]
    size = 32
    cfg = bench.Config(**{**bench.TINY, "image_size": 24 if spec["objective"] == "dagman" else size, "steps": 2,
                          "batch_size": 4})
    x = torch.rand(8, 1, size, size, generator=torch.Generator().manual_seed(0))
    axes = torch.from_numpy(np.stack([SymmetryAxis2D.centre((size, size), split_dim=1).as_array()] * 8)).float()
    cp = bench.Checkpoints((0.0, 1.0), lambda enc: ({}, {"global|side": 0.5}), x)
    trained, log = bench.pretrain(cfg, x, axes, spec, 0, cp)
    assert log["steps"] == 2 and math.isfinite(log["last"]["loss"]) and not trained.mirror
    assert [c["step"] for c in cp.curve] == [0, 2]
    diag = cp.curve[-1]["diag"]
    assert diag and all(math.isfinite(v) for v in diag.values())
    if spec["objective"] == "dino":
        assert 0.0 < diag["teacher_entropy"] <= diag["log_out_dim"] + 1e-6 == math.log(1024) + 1e-6
        assert 1 <= diag["prototypes_used"] <= 8
    elif spec["objective"] == "mixedae":
        topk = [v for k, v in diag.items() if k.startswith("mixedae/topk_acc")]
        assert topk and all(0.0 <= v <= 1.0 for v in topk)
    else:
        assert 0.0 <= diag["dagman/mask_overlap"] <= 1.0
        assert any(k.startswith("dagman/entropy_") for k in diag)


def test_probe_separates_what_is_separable_and_not_noise(bench):
    rng = np.random.default_rng(0)
    side = np.array(["none", "left", "right"] * 40)
    labels = {"side": side}
    folds = bench.fold_ids(labels, 4, 0)
    f = rng.normal(size=(120, 8))
    f[side == "right", 0] += 6.0  # the side is in feature 0
    p, pf = bench.probe(f, f, labels, "side", folds)
    y = (side[side != "none"] == "right").astype(int)
    assert len(p) == 80 and np.isfinite(p).all() and np.array_equal(p, pf)
    from mfassl.evaluation import auroc

    assert ((p >= 0.5) == y).mean() >= 0.95 and auroc(p, y) > 0.99
    p_noise, _ = bench.probe(rng.normal(size=(120, 8)), f, labels, "presence", folds)

    assert abs(auroc(p_noise, (side != "none").astype(int)) - 0.5) < 0.15
    only, _ = bench.probe(f, f, labels, "side", folds, test_folds=[1])
    assert np.isfinite(only).sum() == int(((folds == 1) & (side != "none")).sum())


def test_probe_chooses_its_strength_by_inner_cross_validation(bench, monkeypatch):
    """Separable data choose the weakest regularisation (largest ``C``) of the candidates, pure noise the
    strongest; one candidate is used as it is, one fit and no inner folds."""
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 30)
    x = rng.normal(size=(60, 4))
    x[:, 0] += 10.0 * y  # far apart: the held-out log loss falls as the regularisation weakens
    fits = []
    fit = bench.LogisticProbe._fit
    monkeypatch.setattr(bench.LogisticProbe, "_fit", staticmethod(lambda *a: fits.append(a[2]) or fit(*a)))
    assert bench.LogisticProbe(x, y).c == max(bench.PROBE_CS)
    assert len(fits) == 3 * len(bench.PROBE_CS) + 1  # 3 inner folds per candidate, then the refit on all rows
    assert bench.LogisticProbe(rng.normal(size=(60, 4)), y).c == min(bench.PROBE_CS)
    fits.clear()
    monkeypatch.setattr(bench, "PROBE_CS", (0.5,))
    assert bench.LogisticProbe(x, y).c == 0.5 and fits == [0.5]


def test_pixel_floor_sees_the_one_sided_blob_in_the_difference(bench):
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 4:12, 3:13] = 0.5  # symmetric about the centre column (7.5)
    x[1, 0, 6:9, 11:13] = 1.0  # one-sided finding in the right half of image 1
    axes = torch.tensor([[0.0, 1.0, 7.5]]).repeat(2, 1)
    feats = bench.pixel_features(x, axes)
    g, gf = feats["global"]
    assert g.shape == (2, 256) and torch.equal(gf.view(2, 1, 16, 16), torch.flip(x, dims=(-1,)))
    d, df = feats["paired"]
    assert d.shape == (2, 128)
    assert float(d[0].abs().max()) < 1e-5 and float(d[1].abs().max()) > 0.4  # symmetric: no difference
    assert torch.allclose(df[1].abs().sum(), d[1].abs().sum(), atol=1e-4)  # the flip moves it, keeps its size


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
    rows = [{"task": "side", "readout": "global", "diff": {"flip_baseline": {"auroc": (0.0, -0.1, 0.1)}}},
            {"task": "side", "readout": "global", "diff": {"flip_baseline": {"auroc": (0.0, -0.2, 0.2)}}}]
    assert bench.detectable_difference(rows, "side", "global") == pytest.approx(2.8 * 0.3 / 3.92)


def test_subsets_score_each_kind_of_finding_against_the_clean_images(report_mod):
    labels = {"side": np.array(["none", "left", "right", "none", "left", "right"]),
              "size": np.array(["none", "tiny", "tiny", "none", "large", "large"]),
              "density": np.array(["none", "faint", "dense", "none", "faint", "dense"])}
    pres = report_mod.subsets(labels, "presence")
    assert pres["size=tiny"].tolist() == [True, True, True, True, False, False]  # tiny findings + clean images
    side = report_mod.subsets(labels, "side")
    assert side["density=faint"].tolist() == [True, False, True, False] and "size=none" not in side
    assert "side=left" in pres and not any(k.startswith("side=") for k in side)  # one class: no side AUROC
    assert report_mod.n_findings(pres["size=tiny"], report_mod.task_targets(labels, "presence"), "presence") == 2


def test_tiny_run_end_to_end(bench, tiny_run):
    out, res = tiny_run
    methods = res["methods"]
    assert set(methods) == set(bench.TINY["methods"])
    assert len(res["rows"]) == len(methods) * 2 * 2
    for r in res["rows"]:
        for k in ("accuracy", "auroc", "ece", "brier", "flip_consistency"):
            est, lo, hi = r[k]
            assert 0.0 <= est <= 1.0 and (math.isnan(lo) or lo <= hi)
        assert r["seeds"] == [0]
        assert ("flip_baseline" in r["diff"]) == (r["method"] != "flip_baseline")
        assert {"size=tiny", "size=large", "density=faint", "density=moderate"} <= set(r["subsets"])
    # the same initial weights and the same views: every trained method starts from the same base loss
    units = {m: json.loads((out / "results" / f"{m}__seed0.json").read_text()) for m in methods}
    first = {m: units[m]["train"]["first"]["base"] for m in ("flip_baseline", "essl_flip", "mfassl")}
    assert first["flip_baseline"] == pytest.approx(first["essl_flip"], rel=1e-6)
    assert first["flip_baseline"] == pytest.approx(first["mfassl"], rel=1e-6)
    assert "flip_loss" in units["essl_flip"]["train"]["last"] and "flip_loss" not in units["mfassl"]["train"]["last"]
    # learning curves: probes before training and at the end of the same run; the untrained encoder's step-0
    # probe of a trained method equals random_init's (same weights, same folds)
    curve = units["flip_baseline"]["curve"]
    assert [c["step"] for c in curve] == [0, 8]
    assert curve[0]["auroc"] == pytest.approx(units["random_init"]["curve"][0]["auroc"])
    assert units["flip_baseline"]["probs"]["global|side"]["p"] != units["random_init"]["probs"]["global|side"]["p"]
    assert "gate_mean" in units["mfassl"]["curve"][-1]["diag"] and "gate_mean" not in curve[-1]["diag"]
    assert len(units["pixels"]["probs"]["paired|presence"]["p"]) == 24
    assert len(units["supervised"]["probs"]["global|side"]["p"]) == 16 and units["supervised"]["train"] == {}
    table = (out / "table.md").read_text()
    assert all(m in table for m in methods) and "Learning curves" in table and "Smallest AUROC difference" in table
    for name in ("reflection.png", "curves.png"):
        png = out / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    data = json.loads(next((out / "results").glob("data-*.json")).read_text())
    assert data["summary"]["n_images"] == 24 and data["summary"]["n_lesion"] == 16


def test_finished_units_are_skipped_and_the_report_pools_folders(bench, tiny_run, tmp_path):
    out, res = tiny_run
    results = out / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*__seed*.json")}
    assert bench.main(["--tiny", "--out", str(out), "--results", str(results)]) == 0  # nothing left to run
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*__seed*.json")} == before
    merged = bench.merge([results], tmp_path / "merged", n_boot=20)
    for a, b in zip(sorted(res["rows"], key=str), sorted(merged["rows"], key=str)):
        assert (a["method"], a["readout"], a["task"]) == (b["method"], b["readout"], b["task"])
        assert b["auroc"][0] == pytest.approx(a["auroc"][0])
    assert (tmp_path / "merged" / "table.md").is_file()


def test_results_of_other_settings_are_not_pooled(bench, tiny_run, tmp_path):
    out, _ = tiny_run
    other = tmp_path / "other"
    other.mkdir()
    for f in (out / "results").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    u = json.loads((other / "mfassl__seed0.json").read_text())
    u["run_key"], u["seed"] = "0123456789", 1
    (other / "mfassl__seed1.json").write_text(json.dumps(u))
    with pytest.raises(ValueError, match="mfassl__seed1.json"):
        bench.merge([other], tmp_path / "m")
    (other / "mfassl__seed1.json").write_text("{not json")
    with pytest.raises(ValueError, match="mfassl__seed1.json: not a readable JSON"):
        bench.merge([other], tmp_path / "m")


def test_checkpoint_steps_one_apart_share_a_table_column(report_mod):
    cols, column = report_mod._step_columns([0, 150, 2400, 2401])
    assert cols == [0, 150, 2401] and column[2400] == column[2401] == 2401 and column[150] == 150
