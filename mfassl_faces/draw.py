"""Drawing landmarks and the symmetry axis onto an image (PNG output of the ``axis`` command)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mfassl.cli import mark_overlay
from mfassl.files import write_bytes
from mfassl_faces.io import encode_image

__all__ = ["axis_segment", "draw_faces"]


def axis_segment(normal_xy: Sequence[float], offset: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The two ends of the line ``n . (x, y) = d`` clipped to the image rectangle (None if it misses)."""
    n = np.asarray(normal_xy, dtype=np.float64)
    pts = []
    if abs(n[0]) > 1e-12:  # crossings of y = 0 and y = H - 1
        for y in (0.0, height - 1.0):
            x = (offset - n[1] * y) / n[0]
            if -1e-6 <= x <= width - 1 + 1e-6:
                pts.append((x, y))
    if abs(n[1]) > 1e-12:  # crossings of x = 0 and x = W - 1
        for x in (0.0, width - 1.0):
            y = (offset - n[0] * x) / n[1]
            if -1e-6 <= y <= height - 1 + 1e-6:
                pts.append((x, y))
    if len(pts) < 2:
        return None
    pts_a = np.array(pts)
    d = np.linalg.norm(pts_a[:, None] - pts_a[None], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    return pts_a[i], pts_a[j]


def draw_faces(image: np.ndarray, faces: Sequence[dict], path: str | os.PathLike) -> None:
    """Draw each face's landmarks (green dots) and axis (red line; orange when it is a fallback).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        faces: dicts with ``landmarks`` (``(N, 2)`` pixel x, y or None), ``normal`` (x, y), ``offset``, ``fallback``.
        path: output PNG, written atomically and tagged as an overlay (:func:`mfassl.cli.mark_overlay`).
    """
    import cv2

    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, int(round(max(h, w) / 400)))
    for f in faces:
        seg = axis_segment(f["normal"], f["offset"], w, h)
        colour = (255, 140, 0) if f.get("fallback") else (255, 0, 0)
        if seg is not None:
            a, b = (tuple(int(round(v)) for v in p) for p in seg)
            cv2.line(out, a, b, colour, thick, cv2.LINE_AA)
        if f.get("landmarks") is not None:
            for x, y in np.asarray(f["landmarks"]):
                cv2.circle(out, (int(round(x)), int(round(y))), thick + 1, (0, 255, 0), -1, cv2.LINE_AA)
    write_bytes(path, mark_overlay(encode_image(out, ".png", path)))
