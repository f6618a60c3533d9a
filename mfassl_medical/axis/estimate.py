"""Public axis estimators: 2D midline, 3D mid-sagittal plane, the image centre, and dispatch.

All estimators take an image (numpy / torch / MONAI MetaTensor, channel-first ``(C, *S)`` or plain
``(*S)``) and an optional index -> world ``affine``, and return a
:class:`~mfassl.geometry.SymmetryAxis2D` / :class:`~mfassl.geometry.SymmetryPlane3D` in *world*
coordinates of that affine (index coordinates when it is None) with a confidence in ``[0, 1]``.

Pipeline (same code for 2D and 3D):

1. :func:`~._prepare.prepare`: channels averaged, singleton dims dropped, input checked.
2. :func:`~._prepare.build_pyramid`: one block-mean pass to the finest working level, then halvings.
3. :func:`~._search.coarse_search` on the coarsest level: every direction within ``max_angle`` of
   the left-right prior (index dim along world x), all offsets at once by FFT self-convolution NCC.
   2D (``contrast_sigma``, ``coverage``): on the locally contrast-normalised image, each NCC weighted by
   the share of the field of view that has its mirror partner in view.
4. :func:`~._refine.refine_level` on the finer levels: robust Gauss-Newton with a bias-field model,
   started from the ``starts`` best coarse peaks on the coarsest level; the one with the best selection
   score goes on (2D: the search score of step 3 at the refined line; 3D: the fit confidence).
5. A weak final fit (confidence below ``retry_below``) is searched again on a finer coarse grid and the
   estimate with the better selection score is kept.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Sequence

import numpy as np

from mfassl.geometry import SymmetryAxis2D, SymmetryHyperplane, SymmetryPlane3D, centre_axis, hyperplane_class
from mfassl.registry import Registry

from ._prepare import Prepared, build_pyramid, prepare, prior_normal
from ._refine import children, refine_level, select_points
from ._search import coarse_search, local_contrast, symmetry_score

logger = logging.getLogger(__name__)

__all__ = [
    "AXIS_ESTIMATORS",
    "DEFAULT_MIN_CONFIDENCE",
    "estimate_axis",
    "estimate_midline",
    "estimate_midsagittal_plane",
    "estimate_centre",
    "slice_midline",
    "slice_midlines",
]

#: Estimates below this confidence fall back to the image centre in :func:`estimate_axis`.
DEFAULT_MIN_CONFIDENCE = 0.3

AXIS_ESTIMATORS: Registry[SymmetryHyperplane] = Registry("axis estimator")

# Defaults per dimensionality; every key can be overridden through ``**options``.
_DEFAULTS: dict[int, dict[str, Any]] = {
    2: dict(max_voxels=300_000, coarse_voxels=12_000, own_gradient_voxels=400_000, max_angle=35.0,
            coarse_step=2.0, coarse_half=None, n_points=(4000, 8000, 12000), bias_order=1, iters=(12, 6, 4), foreground=False,
            starts=3, retry_below=0.85, contrast_sigma=2.0, coverage=1.0),
    3: dict(max_voxels=1_200_000, coarse_voxels=20_000, own_gradient_voxels=250_000, max_angle=45.0,
            coarse_step=10.0, coarse_half=9, n_points=(5000, 12000), bias_order=2, iters=(10, 4), foreground=True,
            starts=3, retry_below=0.85, contrast_sigma=None, coverage=0.0),
}


def _options(dims: int, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(_DEFAULTS[dims])
    unknown = set(options) - set(opts)
    if unknown:
        raise TypeError(f"unknown axis estimation option(s) {sorted(unknown)}; known: {sorted(opts)}.")
    opts.update(options)
    if opts["contrast_sigma"] is not None:
        opts["contrast_sigma"] = _number(opts["contrast_sigma"], "contrast_sigma", "None or a number > 0", strict=True)
    opts["coverage"] = _number(opts["coverage"], "coverage", "a number >= 0", strict=False)
    return opts


def _number(value: Any, name: str, what: str, strict: bool) -> float:
    """``value`` as a finite float that is > 0 (``strict``) or >= 0; a ValueError naming ``name`` otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < 0 or (strict and v == 0):
        raise ValueError(f"axis estimation option {name} must be {what}, got {value!r}.")
    return v


def _centre(prep: Prepared, confidence: float, fallback: bool, info: dict) -> SymmetryHyperplane:
    idx = centre_axis(prep.data.shape, prep.lr_dim)
    world = idx.to_world(prep.affine)
    return world.canonical().replace(confidence=float(np.clip(confidence, 0.0, 1.0)), fallback=fallback, info=info)


def _orient(axis: SymmetryHyperplane, prep: Prepared) -> SymmetryHyperplane:
    """Sign convention: the normal points along +index ``lr_dim`` (as the image centre's does)."""
    col = prep.affine[: prep.dims, prep.lr_dim]
    if float(axis.normal @ col) < 0:
        return axis.replace(normal=-axis.normal, offset=-axis.offset)
    return axis


def _fit_confidence(res: Any) -> float:
    """Confidence of a refined fit: robust correlation, scaled down when fewer than 60% are inliers."""
    return float(np.clip(res.correlation, 0.0, 1.0)) * float(np.clip(res.inlier_fraction / 0.6, 0.0, 1.0))


def _selection_score(res: Any, centre: np.ndarray, coarse: Any, values: np.ndarray | None, coverage: float) -> float:
    """The score that chooses between hypotheses (the refined coarse peaks, the retry's second estimate).

    With ``values`` (the coarse level's contrast-normalised image): the coarse search's own score at the
    refined hyperplane ``res.normal . (x - centre) = res.offset``, i.e. NCC times ``share ** coverage``
    (:func:`~._search.symmetry_score`). Without: the fit confidence times ``res.coverage ** coverage``.
    """
    if values is None:
        share = float(np.clip(res.coverage, 0.0, 1.0))
        return _fit_confidence(res) * (share ** coverage if coverage else 1.0)
    return symmetry_score(coarse, values, res.normal, float(res.normal @ centre) + res.offset, coverage)[0]


def _plane_point(level: Any, cand: Any, d: int) -> np.ndarray:
    """The point of the coarse hyperplane ``cand`` closest to the centre of ``level``'s field of view."""
    n = cand.normal
    centre = level.affine[:d, :d] @ ((np.asarray(level.data.shape) - 1) / 2.0) + level.affine[:d, d]
    return centre - (float(n @ centre) - cand.offset) * n


def _estimate(prep: Prepared, opts: dict[str, Any], method: str) -> SymmetryHyperplane:
    t0 = time.perf_counter()
    d = prep.dims
    data = prep.data
    lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        logger.warning("axis estimation: the image is constant (value %g); returning the image centre", lo)
        return _centre(prep, 0.0, True, {"method": method, "reason": "constant image"})
    levels = build_pyramid(prep, int(opts["max_voxels"]), int(opts["coarse_voxels"]))
    cov_power = float(opts["coverage"])
    # what the coarse search and the choice between hypotheses compare: the locally contrast-normalised
    # coarse image (robust to one-sided density changes) or, without contrast_sigma, its raw intensities
    values = None if opts["contrast_sigma"] is None else local_contrast(levels[-1].data, levels[-1].spacing,
                                                                          float(opts["contrast_sigma"]))

    starts = coarse_search(levels[-1], prior_normal(prep), float(opts["max_angle"]), float(opts["coarse_step"]),
                           bool(opts["foreground"]), max_half=opts["coarse_half"], top_k=int(opts["starts"]),
                           values=values, coverage=cov_power)
    starts = starts if isinstance(starts, list) else [starts]
    coarse = starts[0]
    offset = 0.0
    coef = None
    iters = list(opts["iters"])
    gn_levels = levels[:-1] if len(levels) > 1 else levels
    res = None
    total_iters = 0
    prev_pts: np.ndarray | None = None
    prev_level = None
    n_points = tuple(int(v) for v in np.atleast_1d(opts["n_points"]))
    for li in range(len(gn_levels) - 1, -1, -1):
        level = gn_levels[li]
        k = len(gn_levels) - 1 - li
        npts = n_points[min(k, len(n_points) - 1)]
        if level.data.size <= int(opts["own_gradient_voxels"]) or prev_pts is None or prev_level is None:
            pts = select_points(level, npts)
        else:
            rel = tuple(int(a // b) for a, b in zip(prev_level.factors, level.factors))
            kid = children(prev_pts, rel)
            inside = np.all(kid < np.asarray(level.data.shape), axis=1)
            pts = kid[inside]
        max_iter = iters[min(k, len(iters) - 1)]
        if k == 0:
            # multi-start on the coarsest Gauss-Newton level: each coarse peak is refined and the best one
            # goes on, so one wrong coarse peak cannot decide alone. "Best": the coarse search's own score
            # at the refined line (contrast mode), else the fit (robust correlation x inlier share)
            best = None
            for cand in starts:
                c_centre = _plane_point(levels[-1], cand, d)
                r = refine_level(level, pts, cand.normal, 0.0, c_centre, None, int(opts["bias_order"]), max_iter)
                total_iters += r.iterations
                key = _selection_score(r, c_centre, levels[-1], values, cov_power)
                if best is None or key > best[0]:
                    best = (key, r, c_centre)
            assert best is not None
            _, res, centre = best
        else:
            res = refine_level(level, pts, n, offset, centre, coef, int(opts["bias_order"]), max_iter)
            total_iters += res.iterations
        n, offset, coef = res.normal, res.offset, res.coef
        # points for the next finer level: the strongest voxels of this one, thinned so that their
        # children number about n_points
        if li > 0:
            nxt = gn_levels[li - 1]
            rel = tuple(int(a // b) for a, b in zip(level.factors, nxt.factors))
            per = int(np.prod(rel))
            nxt_pts = n_points[min(k + 1, len(n_points) - 1)]
            prev_pts = select_points(level, max(1, nxt_pts // per)) if nxt.data.size > int(
                opts["own_gradient_voxels"]) else None
            prev_level = level
    assert res is not None
    conf = _fit_confidence(res)
    score = _selection_score(res, centre, levels[-1], values, cov_power)
    axis = hyperplane_class(d)(normal=n, offset=float(n @ centre) + offset, confidence=conf, fallback=False)
    info = {"method": method, "coarse_score": coarse.score, "score": score, "correlation": res.correlation,
            "inlier_fraction": res.inlier_fraction, "coverage": res.coverage, "iterations": total_iters,
            "points": res.points, "levels": [tuple(lv.data.shape) for lv in levels],
            "seconds": time.perf_counter() - t0}
    return _orient(axis, prep).replace(info=info)


def _run(image: Any, affine: Any, dims: int | None, method: str, options: dict[str, Any]) -> SymmetryHyperplane:
    channel_first = options.pop("channel_first", None)
    split_dim = options.pop("split_dim", None)
    prep = prepare(image, affine, channel_first=channel_first, split_dim=split_dim)
    if dims is not None and prep.dims != dims:
        raise ValueError(f"{method} needs a {dims}D image, got {prep.dims} spatial dims (shape {prep.data.shape}).")
    opts = _options(prep.dims, options)
    axis = _estimate(prep, opts, method)
    if axis.fallback or axis.confidence >= float(opts["retry_below"]):
        return axis
    # a weak fit may come from a coarse grid that stepped over the true peak: search again on a finer
    # grid and keep the better fit (the usual case pays nothing, a hard one about twice the time)
    finer = dict(opts, coarse_step=0.6 * float(opts["coarse_step"]))
    second = _estimate(prep, finer, method)
    best = second if second.info["score"] > axis.info["score"] else axis
    info = dict(best.info, retried=True, first_confidence=axis.confidence, second_confidence=second.confidence,
                first_score=axis.info["score"], second_score=second.info["score"])
    return best.replace(info=info)


@AXIS_ESTIMATORS.register("midline")
def estimate_midline(image: Any, affine: Any = None, **options: Any) -> SymmetryAxis2D:
    """Midline of a 2D image (chest X-ray, axial slice): the line that best maps it onto its reflection.

    Args:
        image: ``(H, W)`` / ``(C, H, W)`` (numpy, torch, MetaTensor); a trailing singleton dim is dropped.
        affine: index -> world ``(3, 3)`` (or MONAI's ``(4, 4)``); None: index coordinates.
        options: ``channel_first``, ``split_dim`` (the left-right index dim), ``max_angle`` (degrees
            searched around it, 35), ``coarse_step`` (2), ``n_points`` (per level, coarse first: 4000, 8000, 12000), ``bias_order`` (1),
            ``max_voxels`` (finest working size, 300000 pixels), ``coarse_voxels``, ``iters``, ``starts`` (coarse
            peaks refined on the coarsest level, the best goes on: 3), ``retry_below`` (a result whose
            confidence is below it is searched again on a 0.6x finer coarse grid and the better kept: 0.85),
            ``contrast_sigma`` (the coarse search and the choice between refined peaks compare locally
            contrast-normalised images with this Gaussian window, in coarse-level pixels: 2; None: raw
            intensities and the fit confidence), ``coverage`` (exponent of the factor ``share ** coverage``
            on those scores, ``share`` = the part of the image whose mirror lies inside it: 1; 0: none).

    Returns:
        :class:`SymmetryAxis2D` ``n . x = d`` in world coordinates, normal oriented along the
        left-right index dim, ``confidence`` = robust correlation of the image with its reflection.
    """
    return _run(image, affine, 2, "midline", dict(options))  # type: ignore[return-value]


@AXIS_ESTIMATORS.register("msp")
def estimate_midsagittal_plane(volume: Any, affine: Any = None, **options: Any) -> SymmetryPlane3D:
    """Mid-sagittal plane of a 3D volume (brain MRI) in world mm.

    Args:
        volume: ``(X, Y, Z)`` / ``(C, X, Y, Z)`` (numpy, torch, MetaTensor); anisotropic voxels are
            handled through ``affine``.
        affine: index -> world ``(4, 4)``; None: index coordinates.
        options: as :func:`estimate_midline` (defaults: ``max_angle`` 45, ``coarse_step`` 10,
            ``n_points`` (5000, 12000), ``bias_order`` 2, ``max_voxels`` 1.2M voxels, ``contrast_sigma``
            None and ``coverage`` 0: raw-intensity NCC, the refined peaks chosen by fit confidence).

    Returns:
        :class:`SymmetryPlane3D` ``n . x = d`` (world), normal oriented along the left-right index dim.
    """
    return _run(volume, affine, 3, "msp", dict(options))  # type: ignore[return-value]


@AXIS_ESTIMATORS.register("auto")
def _estimate_auto(image: Any, affine: Any = None, **options: Any) -> SymmetryHyperplane:
    return _run(image, affine, None, "auto", dict(options))


@AXIS_ESTIMATORS.register("centre")
def estimate_centre(image: Any, affine: Any = None, channel_first: bool | None = None,
                    split_dim: int | None = None, **_: Any) -> SymmetryHyperplane:
    """The image centre line/plane (the published behaviour), normal along the left-right index dim.

    Confidence 0 (no evidence was looked at), ``fallback=False`` (it was asked for).
    """
    prep = prepare(image, affine, channel_first=channel_first, split_dim=split_dim)
    return _centre(prep, 0.0, False, {"method": "centre"})


def estimate_axis(image: Any, affine: Any = None, method: str = "auto",
                  min_confidence: float = DEFAULT_MIN_CONFIDENCE, **options: Any) -> SymmetryHyperplane:
    """Estimate the symmetry axis of a 2D or 3D image, falling back to the image centre.

    Args:
        image: ``(C, *S)`` or ``(*S)`` with 2 or 3 spatial dims (numpy, torch or MetaTensor; a 4-dim
            array or a MetaTensor is channel-first, see ``channel_first``).
        affine: index -> world matrix; None: the result is in index coordinates.
        method: a name in :data:`AXIS_ESTIMATORS` (``"auto"``: ``"midline"`` for 2D, ``"msp"`` for 3D).
        min_confidence: below it the image centre is returned with ``fallback=True`` (the estimate's
            confidence kept, its axis in ``info["estimate"]``) and a warning is logged.
        options: estimator options (see :func:`estimate_midline`).

    Raises:
        ValueError: NaN/inf, empty or wrongly shaped input. A constant image does not raise: it
            gives the centre with confidence 0 and ``fallback=True``.
    """
    name = str(method).lower()
    fn = AXIS_ESTIMATORS.get(name)
    axis = fn(image, affine, **options)
    if name == "centre" or axis.fallback or axis.confidence >= min_confidence:
        return axis
    logger.warning("axis estimate (%s) has confidence %.3f < %.3f; falling back to the image centre",
                   axis.info.get("method", name), axis.confidence, min_confidence)
    prep = prepare(image, affine, channel_first=options.get("channel_first"), split_dim=options.get("split_dim"))
    info = dict(axis.info)
    info.update(estimate=axis.to_dict(), reason=f"confidence {axis.confidence:.3f} < {min_confidence}")
    return _centre(prep, axis.confidence, True, info)


# ---------------------------------------------------------------------- slices of a volume
def slice_midline(plane: SymmetryPlane3D, affine: Any, slice_axis: int, index: float) -> SymmetryAxis2D:
    """The midline of one slice of a volume: the (world) plane cut by the slice ``p[slice_axis] = index``.

    Args:
        plane: the mid-sagittal plane in world coordinates of ``affine``.
        affine: ``(4, 4)`` index -> world of the volume.
        slice_axis: the index dim the slices are taken along (2 for axial slices of a RAS volume).
        index: the slice index.

    Returns:
        :class:`SymmetryAxis2D` in *index* coordinates of the 2D slice (the remaining two dims, in
        order), with the plane's confidence and fallback flag.
    """
    idx_plane = plane.to_index(np.asarray(affine, dtype=np.float64))
    return idx_plane.cut_by_slice(slice_axis, float(index))


def slice_midlines(plane: SymmetryPlane3D, affine: Any, num_slices: int, slice_axis: int = 2,
                   indices: Sequence[int] | None = None) -> list[SymmetryAxis2D]:
    """:func:`slice_midline` for every slice (or ``indices``): all slices of a case agree by construction."""
    ids = range(num_slices) if indices is None else indices
    return [slice_midline(plane, affine, slice_axis, i) for i in ids]
