"""mfassl.evaluation: metrics against sklearn and hand values, bootstrap, read-outs, inference shift, figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, log_loss, roc_auc_score

from mfassl import evaluation as ev
from mfassl.backbones import create_backbone


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    p[:10] = 0.5  # ties
    return p, y


def test_metrics_match_sklearn(scores):
    p, y = scores
    assert ev.auroc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert ev.auprc(p, y) == pytest.approx(average_precision_score(y, p), abs=1e-9)
    assert ev.f1(p, y) == pytest.approx(f1_score(y, p >= 0.5), abs=1e-12)
    assert ev.nll(p, y) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-9)
    assert ev.brier(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert np.isnan(ev.auroc(p, np.ones_like(y))) and np.isnan(ev.auprc(p, np.zeros_like(y)))


def test_auroc_is_the_rank_statistic_of_monai_with_ties_by_hand():
    import torch
    from monai.metrics import compute_roc_auc

    # positives {0.5, 0.9} against negatives {0.5, 0.2}: 1/2 (the tie) + 1 + 1 + 1 of 4 pairs
    assert ev.auroc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1])) == 0.875
    assert ev.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    rng = np.random.default_rng(1)
    for n, levels in ((7, 3), (50, 4), (480, 1000)):  # heavy ties to none
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        s = rng.integers(0, levels, n) / levels + 0.1 * y
        ref = float(compute_roc_auc(torch.as_tensor(s), torch.as_tensor(y.astype(float))))
        assert ev.auroc(s, y) == pytest.approx(ref, abs=1e-12)
    assert np.isnan(ev.auroc(np.array([np.nan, 0.2, 0.8, 0.5]), np.array([0, 1, 1, 0])))  # MONAI gives 0.25
    assert ev.auroc(np.array([-np.inf, 0.2, np.inf]), np.array([0, 0, 1])) == 1.0
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        ev.auroc(np.zeros(3), np.array([0, 1]))


def test_resampled_auroc_equals_auroc_of_each_resample():
    """Each resample's AUROC from the row counts is the per-resample rank statistic, exactly: with heavy ties, a
    NaN score (NaN only where a resample draws it), and resamples that lose a class (NaN)."""
    rng = np.random.default_rng(2)
    for n, levels, trial in ((9, 2, 0), (60, 5, 1), (300, 10_000, 2), (40, 3, 3)):
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        if trial == 3:
            y[:] = 0
            y[0] = 1  # one positive: most resamples have none
        s = rng.integers(0, levels, n) / levels
        if trial == 1:
            s[7] = np.nan
        idx = ev.bootstrap_indices(n, 200, trial)
        ref = np.array([ev.auroc(s[i], y[i]) for i in idx])
        got = ev.resampled_auroc(s, y, idx)
        assert got.shape == (200,)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        assert np.nanmax(np.abs(got - ref)) < 1e-12
        if trial in (1, 3):  # the NaN score and the lone positive: some resamples NaN, not all
            assert 0 < np.isnan(ref).sum() < 200
    # the positives {0.5, 0.9} and negatives {0.5, 0.2} of the hand example, drawn twice over
    s, y = np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1])
    assert ev.resampled_auroc(s, y, np.array([[0, 1, 2, 3], [0, 0, 1, 2]])).tolist() == [0.875, 0.75]
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        ev.resampled_auroc(np.zeros(3), np.array([0, 1]), np.zeros((1, 2), int))


def test_percentile_interval_ignores_non_finite_resamples():
    assert ev.percentile_interval(0.5, np.array([0.0, 1.0, np.nan, np.inf] + [0.5] * 96)) == pytest.approx(
        (0.5, 0.5, 0.5))
    point, lo, hi = ev.percentile_interval(0.3, np.linspace(0, 1, 101), alpha=0.1)
    assert (point, lo, hi) == pytest.approx((0.3, 0.05, 0.95))
    assert np.isnan(ev.percentile_interval(0.1, np.array([np.nan, np.inf]))[1:]).all()


def test_ece_by_hand():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.7 (correct): bins of width 1/15
    p = np.array([0.9, 0.1, 0.6, 0.3])
    y = np.array([1, 1, 1, 0])
    # bin (0.8667, 0.9333]: two samples, acc 0.5, conf 0.9 -> 2/4 * 0.4; 0.6 and 0.7 alone: |1 - c|
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert ev.ece(p, y, n_bins=15) == pytest.approx(expected)
    assert ev.ece(np.array([1.0, 0.0]), np.array([1, 0])) == pytest.approx(0.0)


def test_flip_consistency_with_and_without_swap():
    p = np.array([0.9, 0.2, 0.7, 0.4])
    same = np.array([0.8, 0.1, 0.3, 0.45])
    assert ev.flip_consistency(p, same) == pytest.approx(0.75)
    # a lateral label: the mirror image's prediction must be the opposite
    assert ev.flip_consistency(p, 1 - p, swap=True) == 1.0
    assert ev.flip_consistency(p, p, swap=True) == 0.0


def test_bootstrap_ci_is_deterministic_and_covers_the_estimate(scores):
    p, y = scores
    a = ev.bootstrap_ci(ev.auroc, p, y, n_boot=200, seed=3)
    b = ev.bootstrap_ci(ev.auroc, p, y, n_boot=200, seed=3)
    assert a == b
    assert a[1] < a[0] < a[2] and a[2] - a[1] < 0.2
    assert ev.bootstrap_ci(ev.auroc, p, y, n_boot=200, seed=4) != a


def test_bootstrap_ci_ignores_nan_resamples_and_empty_data():
    # one positive in 12: many resamples miss it and give a NaN AUROC, the rest make the interval
    y = np.zeros(12)
    y[0] = 1
    s = np.linspace(1, 0, 12)
    est, lo, hi = ev.bootstrap_ci(ev.auroc, s, y, n_boot=200, seed=0)
    assert est == 1.0 and lo == 1.0 and hi == 1.0
    assert all(np.isnan(v) for v in ev.bootstrap_ci(ev.auroc, np.ones(5), np.ones(5), n_boot=20))
    est, lo, hi = ev.bootstrap_ci(lambda a: float(len(a)), np.zeros(0), n_boot=20)
    assert est == 0.0 and np.isnan(lo) and np.isnan(hi)


def test_classification_report_excludes_nan_labels_and_averages(scores):
    p, y = scores
    probs = np.stack([p, 1 - p], 1)
    labels = np.stack([y, y], 1)
    labels[:50, 1] = np.nan
    rep = ev.classification_report(probs, labels, probs_flipped=probs, names=["a", "b"], swap=[False, True],
                                   n_boot=100, seed=0)
    keep = ~np.isnan(labels[:, 1])
    assert rep["per_label"]["a"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert rep["per_label"]["b"]["auroc"]["value"] == pytest.approx(roc_auc_score(y[keep], 1 - p[keep]))
    macro = np.mean([rep["per_label"][n]["auroc"]["value"] for n in "ab"])
    assert rep["macro"]["auroc"]["value"] == pytest.approx(macro)
    assert rep["per_label"]["a"]["flip_consistency"]["value"] == 1.0
    assert rep["per_label"]["b"]["flip_consistency"]["value"] == 0.0  # lateral label that did not swap
    for m in ("auroc", "auprc", "f1", "nll", "ece", "brier"):
        r = rep["macro"][m]
        assert r["ci_low"] <= r["value"] + 1e-12 and r["value"] <= r["ci_high"] + 1e-12, m


def _clusters(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2).float()
    x = torch.randn(n, d, generator=g) * 0.5
    x[:, 0] += 3 * (2 * y - 1)
    return x, y[:, None]


def test_knn_and_linear_probe_separate_clusters():
    x, y = _clusters(80)
    xt, yt = _clusters(40, seed=1)
    for probs in (ev.knn_predict(x, y, xt, k=5), ev.linear_probe(x, y, xt, epochs=100)):
        assert probs.shape == (40, 1) and probs.min() >= 0 and probs.max() <= 1
        assert ev.auroc(probs[:, 0].numpy(), yt[:, 0].numpy()) > 0.95
    # a NaN label takes no part in the vote: with all labels of the neighbours unknown, 0.5
    y_nan = torch.full_like(y, float("nan"))
    assert torch.allclose(ev.knn_predict(x, y_nan, xt, k=5), torch.full((40, 1), 0.5))
    assert torch.equal(ev.linear_probe(x, y, xt, seed=2), ev.linear_probe(x, y, xt, seed=2))


def _tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("mfa_vit", spatial_dims=2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2,
                           num_heads=4, mfa_layer=1)


def test_fine_tune_leaves_the_encoder_alone_and_predicts():
    enc = _tiny_vit()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = (torch.arange(8) % 2).float()[:, None]
    x[y[:, 0] > 0] += 1.0
    probs = ev.fine_tune(enc, x, y, x, epochs=3, lr=1e-3, batch_size=4)
    assert probs.shape == (8, 1) and probs.min() >= 0 and probs.max() <= 1
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    frozen = ev.fine_tune(enc, x, y, x, epochs=1, batch_size=4, freeze=True)
    assert frozen.shape == (8, 1)
    feats = ev.extract_features(enc, x, batch_size=3)
    assert feats.shape == (8, 32) and torch.allclose(feats, enc.eval()(x), atol=1e-6)


def test_inference_shift_is_positive_with_mfa_and_zero_without_gates():
    enc = _tiny_vit()
    g = torch.Generator().manual_seed(1)
    x_l, x_r = torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    out = ev.inference_shift(enc, x_l, x_r)
    assert out["relative_shift"] > 0 and len(out["per_sample"]) == 2 and 0 < out["gate_mean"] < 1
    # the shift is what MFA adds: with every gate shut (a very negative gate bias a) and no difference
    # term (gamma 0) MFA is the identity
    with torch.no_grad():
        enc.mfa.a.fill_(-50.0)
        enc.mfa.gamma.zero_()
    shut = ev.inference_shift(enc, x_l, x_r)
    assert shut["relative_shift"] < 1e-6 * max(1.0, out["relative_shift"])
    # with no cross-attention weight (alpha 0) either, z = p exactly, whatever the gates
    with torch.no_grad():
        enc.mfa.a.fill_(0.5)
        enc.mfa.alpha.zero_()
    off = ev.inference_shift(enc, x_l, x_r)
    assert off["relative_shift"] == 0.0 and off["per_sample"] == [0.0, 0.0] and off["gate_mean"] > 0
    # a key mask restricts the norms and the gate mean to the valid tokens
    km = torch.ones(2, 4 * 4, dtype=torch.bool)
    km[:, :4] = False
    assert np.isfinite(ev.inference_shift(_tiny_vit(), x_l, x_r, key_mask=km)["relative_shift"])
    assert ev.inference_shift(torch.nn.Linear(2, 2), x_l, x_r)["relative_shift"] == 0.0


def test_figures_are_written(tmp_path, scores):
    p, y = scores
    fpr, tpr = ev.roc_curve(p, y)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, p))
    assert ev.plot_roc({"a": (p, y)}, tmp_path / "roc.png").stat().st_size > 1000
    assert ev.plot_reliability(p, y, tmp_path / "rel.png").stat().st_size > 1000
    gates = torch.rand(2, 16)
    assert ev.plot_gate_maps(torch.rand(2, 1, 32, 32), gates, (4, 4), tmp_path / "g.png").stat().st_size > 1000
    assert ev.plot_gate_maps(torch.rand(2, 1, 8, 8, 8), torch.rand(2, 8), (2, 2, 2), tmp_path / "g3.png").exists()
