"""The demo faces and dlib crops move landmarks with the pixels (:func:`mfassl.geometry.similarity_matrix`)."""

from __future__ import annotations

import numpy as np

from mfassl.geometry import similarity_matrix


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def test_demo_transform_moves_landmarks_with_the_pixels() -> None:
    from mfassl_faces import demo

    assert demo.similarity_matrix is similarity_matrix
    image = np.zeros((60, 80, 3), np.uint8)
    image[20, 50] = 255  # pixel (x, y) = (50, 20)
    out, pts, m = demo.transform_face(image, np.array([[50.0, 20.0]]), 30.0, 1.5)
    np.testing.assert_allclose(pts, _apply(m, [[50.0, 20.0]]))
    y, x = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
    assert abs(x - pts[0, 0]) <= 1 and abs(y - pts[0, 1]) <= 1
