"""``python -m mfassl_medical axis PATH [PATH ...] [--json] [--png OUT]``: symmetry axes of image files.

Each file (NIfTI, DICOM file or series folder, PNG, anything MONAI ``LoadImage`` reads) is loaded
with ``LoadImage(image_only=True)`` and its axis estimated with
:func:`mfassl_medical.axis.estimate_axis` in the world frame of the affine MONAI reports (RAS mm
for NIfTI). With ``--json`` one object per line, strict JSON (a NaN or infinite number is ``null``)::

    {"path", "dims", "normal", "offset", "confidence", "fallback", "seconds", "load_seconds", "png"}

where ``normal . x = offset`` for world points ``x`` on the axis, ``seconds`` is the estimation
time, ``load_seconds`` the reading time and ``png`` the overlay written for this input (null without
``--png``). Overlay names come from each input's path relative to the inputs' common folder
(``siteA/scan.nii.gz`` and ``siteB/scan.nii.gz`` give ``siteA_scan_axis.png`` and ``siteB_scan_axis.png``;
a name that is still taken gets ``-2``, ``-3``...), so no input overwrites another's overlay
(:func:`mfassl.cli.overlay_paths`, shared with the face ``axis`` command). Each overlay is written atomically
and tagged as an overlay (a PNG ``Software`` text), so a rerun replaces its own overlays.

A DICOM series folder with a truncated or unreadable slice is an error naming the slice; with
``--allow-missing-slices`` it is read without it and a ``warning: PATH: read without N bad slice(s): ...``
line on stderr names the slices (without ``-v`` too).

Options are checked before any file is read: an unknown ``--method``, a ``--min-confidence`` that is
not a number in [0, 1] (``nan``, ``5``), a ``--png`` file given for several inputs, an overlay that would
be written over an input (``x.png --png x.png``, or ``d/scan.png d/scan_axis.png --png d`` where the first
overlay is the second input; never allowed) or over an existing file that is not an overlay of an axis command
(allowed with ``--overwrite``) stop the command with a usage message and exit code 2. Then every input
gets its answer, or one ``error: PATH: ...`` line on stderr naming it, and the other inputs are still
processed; the exit code is 1 when any input failed (unreadable, not estimable, or its overlay could not be
written: ``no space left on OUT`` for a full disk), else 0.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from mfassl.cli import add_overwrite_option, check_overlays, check_png_target, json_line, mark_overlay, overlay_paths
from mfassl.files import OutputGuard, OutputRefusedError, write_bytes

__all__ = ["main", "load_image", "overlay_paths", "write_overlay"]

logger = logging.getLogger(__name__)


def load_image(path: str, allow_missing_slices: bool = False, missing: list[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` with :class:`~mfassl_medical.transforms.SafeLoadImage` (MONAI ``LoadImage`` after header
    checks: voxel budget, truncation; RGBA/LA composited on black; bad DICOM slices named).

    Args:
        path: an image file or a DICOM series folder.
        allow_missing_slices: read a DICOM series without its truncated/unreadable slices instead of refusing it.
        missing: a list that receives the slices left out (``"file problem"`` each).

    Returns:
        ``(C, *S)`` float32 array (channel-first; a file without channels gets ``C = 1``) and the
        ``(4, 4)`` index -> world affine MONAI reports.
    """
    from mfassl_medical.transforms import SafeLoadImage

    img = SafeLoadImage(check=False, on_bad_slice="warn" if allow_missing_slices else "raise")(path)
    if missing is not None:
        missing.extend(img.meta.get("missing_slices", []))
    affine = np.asarray(img.affine.detach().cpu(), dtype=np.float64)
    return np.asarray(img.as_tensor().detach().cpu(), dtype=np.float32), affine


def _display_slices(data: np.ndarray, axis_index: Any) -> list[tuple[str, np.ndarray, Any]]:
    """(title, 2D array indexed [p0, p1], line in (p0, p1) index coords or None) to draw."""
    if data.ndim == 2:
        return [("image", data, axis_index)]
    out = []
    names = ("sagittal (dim 0)", "coronal (dim 1)", "axial (dim 2)")
    for k in (2, 1, 0):
        mid = (data.shape[k] - 1) // 2
        sl = np.take(data, mid, axis=k)
        line = None
        if abs(axis_index.normal[k]) < 0.7:  # a plane (nearly) parallel to the slice shows no line
            line = axis_index.cut_by_slice(k, float(mid))
        out.append((names[k], sl, line))
    return out


def write_overlay(path: str, data: np.ndarray, axis_index: Any, title: str = "") -> None:
    """PNG of the image (2D) or three orthogonal centre slices (3D) with the axis drawn in red, written
    atomically and tagged as an overlay (:func:`mfassl.cli.mark_overlay`).

    Args:
        path: output PNG file.
        data: ``(*S)`` image, 2 or 3 spatial dims.
        axis_index: the axis in *index* coordinates of ``data``.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _display_slices(data, axis_index)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.8), squeeze=False)
    for ax, (name, sl, line) in zip(axes[0], panels):
        lo, hi = np.percentile(sl, [1, 99.5])
        ax.imshow(sl.T, cmap="gray", origin="lower" if data.ndim == 3 else "upper", vmin=lo, vmax=hi,
                  interpolation="nearest")
        if line is not None:
            n, d = line.normal, line.offset
            h0, h1 = sl.shape
            if abs(n[1]) >= abs(n[0]):  # p1 as a function of p0
                p0 = np.array([0.0, h0 - 1.0])
                p1 = (d - n[0] * p0) / n[1]
            else:
                p1 = np.array([0.0, h1 - 1.0])
                p0 = (d - n[1] * p1) / n[0]
            ax.plot(p0, p1, "r-", lw=1.5)
            ax.set_xlim(-0.5, h0 - 0.5)
            ax.set_ylim((h1 - 0.5, -0.5) if data.ndim == 2 else (-0.5, h1 - 0.5))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, mark_overlay(buf.getvalue()))


def _confidence(text: str) -> float:
    """argparse type of ``--min-confidence``: a finite number in [0, 1]."""
    from mfassl.options import as_float

    try:
        return float(as_float(text, "--min-confidence", low=0.0, high=1.0))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None


def _method(text: str) -> str:
    """argparse type of ``--method``: a name of :data:`mfassl_medical.axis.AXIS_ESTIMATORS`, any case. The
    estimators (torch, SciPy) are imported when a ``--method`` is checked, not for ``--help``."""
    from mfassl_medical.axis import AXIS_ESTIMATORS

    name = text.lower()
    if name not in AXIS_ESTIMATORS.names():
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                         f"{', '.join(repr(n) for n in AXIS_ESTIMATORS.names())})")
    return name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mfassl_medical axis",
                                description="Estimate the symmetry axis (2D midline / 3D mid-sagittal plane) "
                                            "of image files in the world frame of their affine.",
                                epilog="Exit codes: 0 every input answered; 1 at least one input failed (one "
                                       "'error: PATH: ...' line each on stderr, the others still processed); "
                                       "2 a bad option (nothing read).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="NIfTI, DICOM file or series folder, PNG")
    p.add_argument("--json", action="store_true", help="one strict-JSON object per line (default: a readable line)")
    p.add_argument("--png", metavar="OUT", help="overlay PNG: a .png file for one input, else a folder")
    p.add_argument("--method", default="auto", type=_method, metavar="NAME",
                   help="estimator name: auto (default), midline, msp, centre, or one registered in "
                        "mfassl_medical.axis.AXIS_ESTIMATORS")
    p.add_argument("--min-confidence", type=_confidence, default=None,
                   help="fall back to the image centre below this confidence, a number in [0, 1]")
    p.add_argument("--allow-missing-slices", action="store_true",
                   help="read a DICOM series without its truncated/unreadable slices (a warning names them) "
                        "instead of failing it")
    add_overwrite_option(p, "an existing --png file that is not an overlay of an axis command")
    p.add_argument("-v", "--verbose", action="store_true", help="log estimator warnings")
    return p


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns 0 when every input was processed, 1 when any failed (2: bad options)."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    pngs = [None] * len(args.paths)
    try:
        check_png_target(args.png, len(args.paths))
        if args.png:
            pngs = overlay_paths(args.png, args.paths)
            check_overlays(OutputGuard(args.paths, overwrite=args.overwrite), args.png, args.paths, pngs)
    except (ValueError, OutputRefusedError) as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    from mfassl_medical.axis import DEFAULT_MIN_CONFIDENCE, estimate_axis

    min_conf = DEFAULT_MIN_CONFIDENCE if args.min_confidence is None else args.min_confidence
    failures = 0
    for path, png in zip(args.paths, pngs):
        try:
            if not os.path.exists(path):
                raise FileNotFoundError("no such file or folder")
            t0 = time.perf_counter()
            missing: list[str] = []
            data, affine = load_image(path, args.allow_missing_slices, missing)
            load_s = time.perf_counter() - t0
            if missing:
                print(f"warning: {path}: read without {len(missing)} bad slice(s): " + "; ".join(missing[:5]),
                      file=sys.stderr, flush=True)
            t1 = time.perf_counter()
            axis = estimate_axis(data, affine, method=args.method, min_confidence=min_conf, channel_first=True)
            est_s = time.perf_counter() - t1
        except Exception as e:  # report and go on with the next file
            failures += 1
            print(f"error: {path}: cannot process ({_one_line(e)})", file=sys.stderr, flush=True)
            continue
        written = None
        if png is not None:
            try:
                from mfassl_medical.axis._prepare import prepare

                prep = prepare(data, affine, channel_first=True)
                write_overlay(png, prep.data, axis.to_index(prep.affine),
                              title=f"{os.path.basename(os.path.normpath(path))}  conf {axis.confidence:.2f}")
                written = png
            except Exception as e:
                failures += 1
                print(f"error: {path}: cannot write the overlay {png} ({_one_line(e)})", file=sys.stderr, flush=True)
        record = {"path": path, "dims": int(axis.dims), "normal": [float(v) for v in axis.normal],
                  "offset": float(axis.offset), "confidence": float(axis.confidence), "fallback": bool(axis.fallback),
                  "seconds": round(est_s, 6), "load_seconds": round(load_s, 6), "png": written}
        if args.json:
            print(json_line(record), flush=True)
        else:
            n = ", ".join(f"{v:+.4f}" for v in axis.normal)
            print(f"{path}: {axis.dims}D axis n=({n}) offset={axis.offset:.3f} confidence={axis.confidence:.3f}"
                  f"{' FALLBACK' if axis.fallback else ''} ({est_s:.3f} s, load {load_s:.3f} s)"
                  f"{f' png={written}' if written else ''}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
