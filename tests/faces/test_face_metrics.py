import numpy as np
import pytest

from mfassl_faces.metrics import (auc_at, auroc, bootstrap_ci, brier, ced_curve, ece, failure_rate, flip_nme,
                                  landmark_summary, mean_error, nme, per_subset, plot_ced)
from mfassl_faces.schemas import FIVE_POINT


def test_nme_by_hand() -> None:
    gt = np.array([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [2.0, 8.0], [8.0, 8.0]]])  # IOD = 10
    pred = gt.copy()
    pred[0, 2] += [3.0, 4.0]  # error 5 on one of 5 points -> mean 1 -> NME 0.1
    assert nme(pred, gt, FIVE_POINT)[0] == pytest.approx(0.1)


def test_fr_auc_ced_by_hand() -> None:
    e = np.array([0.02, 0.05, 0.08, 0.2])
    assert failure_rate(e, 0.1) == 0.25
    # AUC@0.1 = mean(max(0, 0.1 - e)) / 0.1 = (0.08 + 0.05 + 0.02 + 0) / 4 / 0.1 = 0.375
    assert auc_at(e, 0.1) == pytest.approx(0.375)
    x, y = ced_curve(e, 0.1, steps=11)
    assert y[0] == 0 and y[2] == 0.25 and y[5] == 0.5 and y[-1] == 0.75
    xf, yf = ced_curve(e, 0.1, steps=20001)
    assert np.trapezoid(yf, xf) / 0.1 == pytest.approx(auc_at(e, 0.1), abs=1e-3)  # the curve integrates to it


def test_non_finite_predictions_are_failures() -> None:
    """A NaN prediction never counts as a success: a model predicting only NaN has FR 1 and AUC 0."""
    e = np.array([0.02, np.nan, 0.08, np.inf])
    assert failure_rate(e, 0.1) == 0.5  # NaN and inf fail; before, NaN > 0.1 was False and counted as a success
    assert auc_at(e, 0.1) == pytest.approx((0.08 + 0.02) / 4 / 0.1)
    assert mean_error(e) == pytest.approx(0.05)
    assert landmark_summary(e, 0.1) == pytest.approx({"n": 4, "n_failed": 2, "nme": 0.05, "fr": 0.5, "auc": 0.25})
    only_nan = np.full(3, np.nan)
    assert failure_rate(only_nan) == 1.0 and auc_at(only_nan) == 0.0 and np.isnan(mean_error(only_nan))
    est, lo, hi = bootstrap_ci(mean_error, e, n_boot=200, seed=0)
    assert est == pytest.approx(0.05) and np.isfinite(lo) and np.isfinite(hi) and lo <= est <= hi
    gt = np.array([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [2.0, 8.0], [8.0, 8.0]]])
    assert np.isnan(nme(np.full_like(gt, np.nan), gt, FIVE_POINT)[0])


def test_per_subset_and_plot(tmp_path) -> None:
    e = np.array([0.02, 0.05, 0.08, 0.2])
    flags = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    out = per_subset(e, flags, ["pose", "blur"])
    assert out["full"]["n"] == 4 and out["pose"]["nme"] == pytest.approx(0.05)
    assert out["blur"]["fr"] == 0.5
    plot_ced({"a": e, "b": e / 2}, tmp_path / "ced.png")
    assert (tmp_path / "ced.png").read_bytes()[:4] == b"\x89PNG"


def test_flip_nme_zero_for_equivariant_prediction() -> None:
    width = 40
    pred = np.array([[[10.0, 10.0], [30.0, 12.0], [20.0, 20.0], [12.0, 30.0], [27.0, 31.0]]])
    from mfassl_faces.schemas import flip_landmarks

    assert flip_nme(pred, flip_landmarks(pred, FIVE_POINT, width), FIVE_POINT, width)[0] == pytest.approx(0)
    # un-flipping pred itself: errors sqrt(5), sqrt(5), 1, 1, 1 over IOD sqrt(404)
    expected = (2 * np.sqrt(5) + 3) / 5 / np.sqrt(404)
    assert flip_nme(pred, pred, FIVE_POINT, width)[0] == pytest.approx(expected)


def test_auroc_ece_brier_by_hand() -> None:
    p = np.array([0.9, 0.8, 0.3, 0.6])
    y = np.array([1, 0, 0, 1])
    # pairs (pos, neg): (0.9,0.8) 1, (0.9,0.3) 1, (0.6,0.8) 0, (0.6,0.3) 1 -> 3/4
    assert auroc(p, y) == pytest.approx(0.75)
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert np.isnan(auroc(p, np.ones(4)))
    assert brier(p, y) == pytest.approx((0.01 + 0.64 + 0.09 + 0.16) / 4)
    # top-label confidences 0.9, 0.8, 0.7, 0.6; correct: yes, no, yes, yes; each alone in its 1/15 bin
    # ECE = (|1 - 0.9| + |0 - 0.8| + |1 - 0.7| + |1 - 0.6|) / 4 = 0.4
    assert ece(p, y, 15) == pytest.approx(0.4)
    # two in one bin: conf 0.9 and 0.9 (p = 0.9, 0.1), both correct -> |1 - 0.9| = 0.1
    assert ece(np.array([0.9, 0.1]), np.array([1, 0])) == pytest.approx(0.1)


def test_bootstrap_ci_contains_the_estimate() -> None:
    rng = np.random.default_rng(0)
    e = rng.uniform(0, 0.15, 200)
    est, lo, hi = bootstrap_ci(auc_at, e, n_boot=200)
    assert lo <= est <= hi and hi - lo < 0.2
    s, y = rng.uniform(size=100), rng.integers(0, 2, 100)
    est, lo, hi = bootstrap_ci(auroc, s, y, n_boot=100)
    assert lo <= est <= hi


def _wflw_face() -> np.ndarray:
    """98 points inside the box [10, 80] x [20, 100] (two on its corners), eye corners 60 / 72 at (20, 50) /
    (60, 50) (40 apart), pupils 96 / 97 at (40, 50) / (70, 50) (30 apart)."""
    g = np.random.default_rng(0).uniform([12.0, 22.0], [78.0, 98.0], (98, 2))
    g[0], g[1] = (10.0, 20.0), (80.0, 100.0)
    g[60], g[72], g[96], g[97] = (20.0, 50.0), (60.0, 50.0), (40.0, 50.0), (70.0, 50.0)
    return g


@pytest.mark.parametrize("normalization, expected", [
    ("inter-ocular", 5.0 / 40.0),                 # outer eye corners 60-72
    ("inter-pupil", 5.0 / 30.0),                  # WFLW's annotated pupils 96-97
    ("box", 5.0 / np.sqrt(70.0 * 80.0)),          # sqrt(w * h) of the ground-truth points' box
])
def test_nme_normalisations_by_hand_wflw(normalization: str, expected: float) -> None:
    from mfassl_faces.metrics import normalizing_distance

    g = _wflw_face()
    p = g + np.array([3.0, 4.0])  # every point 5 px off
    assert nme(p[None], g[None], "wflw98", normalization)[0] == pytest.approx(expected, rel=1e-12)
    assert normalizing_distance(g[None], "wflw98", normalization)[0] == pytest.approx(5.0 / expected, rel=1e-12)


def test_inter_pupil_on_68_points_uses_the_eye_centroids() -> None:
    g = np.zeros((68, 2))
    g[:, 0] = np.linspace(0, 60, 68)
    left = [(8, 20), (9, 19), (11, 19), (12, 20), (11, 21), (9, 21)]      # centroid (10, 20)
    right = [(28, 20), (29, 19), (31, 19), (32, 20), (31, 21), (29, 21)]  # centroid (30, 20)
    g[36:42], g[42:48] = left, right
    p = g + np.array([3.0, 4.0])
    assert nme(p[None], g[None], "ibug68", "inter-pupil")[0] == pytest.approx(5.0 / 20.0)
    assert nme(p[None], g[None], "ibug68")[0] == pytest.approx(5.0 / 24.0)  # outer corners (8, 20)-(32, 20)
    with pytest.raises(ValueError, match="unknown normalization 'iod'"):
        nme(p[None], g[None], "ibug68", "iod")


def test_attribute_accuracy_and_balanced_accuracy_by_hand() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from mfassl_faces.metrics import attribute_accuracy, balanced_accuracy

    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7, 0.4])
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    # decisions at 0.5: 1 1 0 1 0 0 1 0; correct: y n y y y y n y -> 6 / 8
    assert attribute_accuracy(p, y) == pytest.approx(0.75)
    # TPR 2 / 2, TNR 4 / 6 -> (1 + 2 / 3) / 2
    assert balanced_accuracy(p, y) == pytest.approx((1.0 + 4.0 / 6.0) / 2)
    assert balanced_accuracy(p, y) == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert np.isnan(balanced_accuracy(p, np.zeros(8))) and attribute_accuracy(p, np.zeros(8)) == pytest.approx(4 / 8)


def test_landmark_report_by_hand() -> None:
    from mfassl_faces.report import format_landmark_table, landmark_report

    e = np.array([0.02, 0.05, 0.08, 0.2, np.nan])  # the NaN face had no usable prediction: a failure
    flags = np.array([[1, 0], [0, 0], [1, 1], [0, 1], [0, 1]])
    rep = landmark_report(e, flags, ["pose", "blur"], threshold=0.08, n_boot=50)
    # FR@0.08 = (0.2, NaN) / 5; AUC@0.08 = (0.06 + 0.03) / 5 / 0.08; NME over the 4 finite faces
    assert rep["fr"]["value"] == pytest.approx(0.4) and rep["auc"]["value"] == pytest.approx(0.225)
    assert rep["nme"]["value"] == pytest.approx(0.0875) and rep["n_failed"] == 1 and rep["n"] == 5
    assert rep["nme"]["ci_low"] <= 0.0875 <= rep["nme"]["ci_high"]
    assert rep["subsets"]["pose"] == {"n": 2, "n_failed": 0, "nme": pytest.approx(0.05), "fr": 0.0,
                                      "auc": pytest.approx((0.06 + 0.0) / 2 / 0.08)}
    assert rep["subsets"]["blur"]["fr"] == pytest.approx(2 / 3) and rep["subsets"]["full"]["n"] == 5
    table = format_landmark_table(rep).splitlines()
    assert "FR and AUC at 0.08" in table[0] and "inter-ocular" in table[0]
    full = table[2].split()
    assert full[:5] == ["full", "5", "8.75", f"[{100 * rep['nme']['ci_low']:.2f},", f"{100 * rep['nme']['ci_high']:.2f}]"]
    assert full[5:] == ["40.00", "0.2250"]
    assert table[3].split() == ["pose", "2", "5.00", "0.00", "0.3750"]
    assert "1 face(s) without a usable prediction" in table[-1]
