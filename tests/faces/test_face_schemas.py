import numpy as np
import pytest

from mfassl_faces.schemas import FIVE_POINT, IBUG68, WFLW98, LandmarkSchema, flip_landmarks, get_schema, schema_for_count

from face_helpers import template

# The published WFLW flip index, written out (contour reversed, brows, nose, eyes, lips, pupils).
PUBLISHED_WFLW_FLIP = (
    list(range(32, -1, -1))
    + [46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38]
    + [51, 52, 53, 54, 59, 58, 57, 56, 55]
    + [72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65]
    + [82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83, 92, 91, 90, 89, 88, 95, 94, 93]
    + [97, 96]
)


@pytest.mark.parametrize("schema", [WFLW98, IBUG68, FIVE_POINT])
def test_mirror_map_is_an_involution(schema: LandmarkSchema) -> None:
    m = schema.mirror_array
    assert np.array_equal(m[m], np.arange(schema.n_points))
    assert schema.mirror[schema.iod[0]] == schema.iod[1]
    assert len(schema.pairs) * 2 + len(schema.midline) == schema.n_points


def test_wflw_map_matches_published_flip_index() -> None:
    assert list(WFLW98.mirror) == PUBLISHED_WFLW_FLIP
    assert WFLW98.iod == (60, 72)
    assert IBUG68.iod == (36, 45)


@pytest.mark.parametrize("schema", [WFLW98, IBUG68, FIVE_POINT])
def test_pairs_are_mirror_images_on_a_symmetric_template(schema: LandmarkSchema) -> None:
    t = template(schema.name)
    assert t.shape == (schema.n_points, 2)
    reflected = t * np.array([-1.0, 1.0])
    np.testing.assert_allclose(reflected[schema.mirror_array], t, atol=1e-12)
    np.testing.assert_allclose(t[schema.midline, 0], 0.0, atol=1e-12)


@pytest.mark.parametrize("schema", [WFLW98, IBUG68, FIVE_POINT])
def test_flip_twice_is_identity_and_flip_of_centred_template_is_itself(schema: LandmarkSchema) -> None:
    width = 101
    pts = template(schema.name) * 30 + np.array([50.0, 50.0])  # symmetric about x = 50 = (W - 1) / 2
    np.testing.assert_allclose(flip_landmarks(pts, schema, width), pts, atol=1e-9)
    rnd = np.random.default_rng(0).uniform(0, 100, (3, schema.n_points, 2))
    np.testing.assert_allclose(flip_landmarks(flip_landmarks(rnd, schema, width), schema, width), rnd)
    flipped = flip_landmarks(rnd, schema, width)
    a, b = schema.pairs[0]
    np.testing.assert_allclose(flipped[:, a, 0], width - 1 - rnd[:, b, 0])


def test_lookup_and_bad_maps() -> None:
    assert get_schema("300w") is IBUG68 and get_schema("wflw") is WFLW98 and get_schema("5") is FIVE_POINT
    assert schema_for_count(98) is WFLW98
    with pytest.raises(ValueError, match="no landmark schema has 12 points"):
        schema_for_count(12)
    with pytest.raises(ValueError, match="involutive"):
        LandmarkSchema("bad", (1, 2, 0), (0, 1))
    with pytest.raises(ValueError, match="expected 68 landmarks"):
        IBUG68.check(np.zeros((67, 2)))


def test_98_to_68_takes_the_published_counterparts() -> None:
    from mfassl_faces.schemas import WFLW98_TO_IBUG68, conversion_matrix, convert_landmarks

    m = WFLW98_TO_IBUG68
    assert len(m) == 68 and len(set(m)) == 68
    # contour every second point, chin 16 -> 8; brows; nose; eye corners; lips; no pupil
    assert [m[0], m[8], m[16]] == [0, 16, 32]
    assert m[17:27] == (33, 34, 35, 36, 37, 42, 43, 44, 45, 46)
    assert m[36:48] == (60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75)
    assert m[48:68] == tuple(range(76, 96)) and 96 not in m and 97 not in m
    pts = np.random.default_rng(0).uniform(0, 100, (2, 98, 2))
    np.testing.assert_allclose(convert_landmarks(pts, "wflw98", "ibug68"), pts[:, list(m)])
    # the eye corners are exact counterparts: the inter-ocular distance is the same in both layouts
    np.testing.assert_allclose(IBUG68.inter_ocular(convert_landmarks(pts, WFLW98, IBUG68)), WFLW98.inter_ocular(pts))
    np.testing.assert_allclose(conversion_matrix("wflw", "wflw"), np.eye(98))
    with pytest.raises(ValueError, match="no landmark conversion from five to wflw98"):
        conversion_matrix("five", "wflw98")


@pytest.mark.parametrize("source, target", [("wflw98", "ibug68"), ("ibug68", "wflw98")])
def test_98_68_conversion_commutes_with_the_flip_maps(source: str, target: str) -> None:
    """Flipping then converting equals converting then flipping, with WFLW's published flip index: the
    correspondence maps left to left and right to right."""
    from mfassl_faces.schemas import convert_landmarks

    width = 120
    pts = np.random.default_rng(1).uniform(0, 119, (3, get_schema(source).n_points, 2))
    a = convert_landmarks(flip_landmarks(pts, source, width), source, target)
    b = flip_landmarks(convert_landmarks(pts, source, target), target, width)
    np.testing.assert_allclose(a, b, atol=1e-12)
    assert list(WFLW98.mirror) == PUBLISHED_WFLW_FLIP


def test_68_to_98_fills_what_68_points_lack() -> None:
    from mfassl_faces.schemas import convert_landmarks

    p68 = np.random.default_rng(2).uniform(0, 100, (68, 2))
    p98 = convert_landmarks(p68, "ibug68", "wflw98")
    np.testing.assert_allclose(convert_landmarks(p98, "wflw98", "ibug68"), p68)  # 68 -> 98 -> 68 is the identity
    np.testing.assert_allclose(p98[1], (p68[0] + p68[1]) / 2)  # odd contour point: a midpoint
    np.testing.assert_allclose(p98[62], (p68[37] + p68[38]) / 2)  # middle of the upper lid
    np.testing.assert_allclose(p98[96], p68[36:42].mean(axis=0))  # pupil: eye centroid
    np.testing.assert_allclose(p98[38], p68[21])  # lower brow edge on the upper brow, inner end
    # the symmetric 68-point template stays symmetric in 98 points
    t98 = convert_landmarks(template("ibug68"), "ibug68", "wflw98")
    np.testing.assert_allclose((t98 * np.array([-1.0, 1.0]))[WFLW98.mirror_array], t98, atol=1e-12)


def test_pupils_of_each_layout() -> None:
    assert WFLW98.pupils == ((96,), (97,)) and FIVE_POINT.pupils == ((0,), (1,))
    assert IBUG68.pupils == (tuple(range(36, 42)), tuple(range(42, 48)))
    pts = template("ibug68")
    assert IBUG68.inter_pupil(pts) == pytest.approx(2 * abs(pts[36:42, 0].mean()))
