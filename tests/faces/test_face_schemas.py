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
