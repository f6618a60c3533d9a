import math

import numpy as np
import pytest
import torch

from mfassl.geometry import (SymmetryAxis2D, SymmetryPlane3D, canonicalizing_matrix, centre_axis, reflection_matrix,
                             rotation_between, similarity_matrix, warp)


@pytest.mark.parametrize("dims", [2, 3])
def test_reflect_twice_is_identity(dims):
    rng = np.random.default_rng(1)
    n = rng.normal(size=dims)
    m = reflection_matrix(n, 3.7)
    assert np.allclose(m @ m, np.eye(dims + 1), atol=1e-12)
    axis = (SymmetryAxis2D if dims == 2 else SymmetryPlane3D)(normal=n, offset=3.7)
    pts = rng.normal(size=(10, dims)) * 5
    back = axis.reflect_points(axis.reflect_points(pts))
    assert np.allclose(back, pts)
    # reflected points are equidistant on the other side
    assert np.allclose(axis.signed_distance(axis.reflect_points(pts)), -axis.signed_distance(pts))


def test_normalisation_and_validation():
    a = SymmetryAxis2D(normal=[0.0, 2.0], offset=10.0, confidence=0.5)
    assert np.allclose(a.normal, [0, 1]) and a.offset == pytest.approx(5.0)
    with pytest.raises(ValueError, match="confidence"):
        SymmetryAxis2D(normal=[0, 1], offset=0, confidence=1.5)
    with pytest.raises(ValueError, match="3 components"):
        SymmetryPlane3D(normal=[0, 1], offset=0)
    with pytest.raises(ValueError, match="finite"):
        SymmetryAxis2D(normal=[np.nan, 1], offset=0)


def test_world_index_round_trip():
    affine = np.array([[-1.5, 0, 0, 90.0], [0, 1.2, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]])
    plane = SymmetryPlane3D.through_point([1.0, 0.1, 0.05], [0.0, 0.0, 0.0])
    idx = plane.to_index(affine)
    # a world point on the plane maps to an index point on the index plane
    w = plane.closest_point([10.0, 20.0, 30.0])
    i = np.linalg.solve(affine, np.append(w, 1.0))[:3]
    assert abs(idx.signed_distance(i)) < 1e-9
    back = idx.to_world(affine)
    assert back.angle_to(plane) < 1e-9 and abs(back.distance_at(plane, w)) < 1e-9


@pytest.mark.parametrize("dims", [2, 3])
def test_rotation_between(dims):
    rng = np.random.default_rng(dims)
    a, b = rng.normal(size=dims), rng.normal(size=dims)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    r = rotation_between(a, b)
    assert np.allclose(r @ a, b) and np.isclose(np.linalg.det(r), 1.0) and np.allclose(r.T @ r, np.eye(dims))


@pytest.mark.parametrize("dims", [2, 3])
def test_canonicalizing_matrix_maps_centre_to_axis(dims):
    shape = (21, 25) if dims == 2 else (21, 25, 19)
    k = 1 if dims == 2 else 0
    n = np.zeros(dims)
    n[k] = 1.0
    n[(k + 1) % dims] = 0.2
    axis = (SymmetryAxis2D if dims == 2 else SymmetryPlane3D)(normal=n, offset=9.0)
    m = canonicalizing_matrix(axis, shape)
    c = (np.asarray(shape) - 1) / 2
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.uniform(0, 20, size=dims)
        y[k] = c[k]
        x = (m @ np.append(y, 1.0))[:dims]
        assert abs(axis.signed_distance(x)) < 1e-9
    assert np.isclose(np.linalg.det(m[:dims, :dims]), 1.0)


def test_cut_by_slice_agrees_with_plane():
    plane = SymmetryPlane3D(normal=[0.98, 0.1, 0.17], offset=40.0)
    line = plane.cut_by_slice(axis=2, index=7.0)
    for y in (0.0, 10.0, 30.0):
        # the line point (x, y) and z=7 lies on the plane
        x = (line.offset - line.normal[1] * y) / line.normal[0]
        assert abs(plane.signed_distance([x, y, 7.0])) < 1e-9


@pytest.mark.parametrize("dims", [2, 3])
def test_warp_identity_and_flip(dims):
    x = torch.rand(2, 3, *([9] * dims))
    eye = torch.eye(dims + 1)
    assert torch.allclose(warp(x, eye), x, atol=1e-5)
    axis = centre_axis(x.shape[2:], split_dim=dims - 1)
    flipped = warp(x, torch.as_tensor(axis.reflection_matrix(), dtype=torch.float32))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_angle_and_serialisation():
    a = SymmetryAxis2D.from_angle(10.0, 5.0)
    b = SymmetryAxis2D.from_angle(-5.0, 5.0)
    assert a.angle_to(b) == pytest.approx(15.0)
    assert a.angle_to(a.replace(normal=-a.normal, offset=-a.offset)) == pytest.approx(0.0, abs=1e-6)
    d = a.to_dict()
    again = SymmetryAxis2D.from_dict(d)
    assert again.angle_to(a) < 1e-6 and again.offset == pytest.approx(a.offset)
    assert set(d) == {"dims", "normal", "offset", "confidence", "fallback"}
    assert math.isclose(np.linalg.norm(a.normal), 1.0)


# ---------------------------------------------------------------------- 2D similarity map
def _apply_similarity(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def test_similarity_matrix_by_hand() -> None:
    m = similarity_matrix(90.0, 2.0, (10.0, 20.0), (5.0, 6.0))
    assert m.shape == (2, 3)
    # the centre lands on the new centre; +x turns towards +y (clockwise on screen) and is scaled by 2
    np.testing.assert_allclose(_apply_similarity(m, [[10.0, 20.0], [11.0, 20.0], [10.0, 21.0]]),
                               [[5.0, 6.0], [5.0, 8.0], [3.0, 6.0]], atol=1e-12)
    np.testing.assert_allclose(similarity_matrix(0.0, 1.0, (3.0, 4.0), (3.0, 4.0)), np.eye(2, 3), atol=1e-15)


@pytest.mark.parametrize("angle, scale", [(25.0, 1.0), (-13.5, 0.4), (170.0, 3.0)])
def test_similarity_matrix_properties(angle: float, scale: float) -> None:
    rng = np.random.default_rng(0)
    c, c2, pts = rng.uniform(-50, 50, 2), rng.uniform(-50, 50, 2), rng.uniform(-100, 100, (7, 2))
    m = similarity_matrix(angle, scale, c, c2)
    back = similarity_matrix(-angle, 1.0 / scale, c2, c)
    np.testing.assert_allclose(_apply_similarity(back, _apply_similarity(m, pts)), pts, atol=1e-9)  # the inverse map
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(_apply_similarity(m, pts)[:, None] - _apply_similarity(m, pts)[None], axis=-1), scale * d,
                               atol=1e-9)  # distances scale, nothing shears
    import cv2

    # about a fixed centre it is OpenCV's rotation matrix, whose positive angle turns the other way on screen
    np.testing.assert_allclose(similarity_matrix(angle, scale, c, c),
                               cv2.getRotationMatrix2D((float(c[0]), float(c[1])), -angle, scale), atol=1e-9)
