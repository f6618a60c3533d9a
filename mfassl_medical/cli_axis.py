"""``python -m mfassl_medical axis PATH [PATH ...] [--json] [--png OUT]``: symmetry axes of image files.

Each file (NIfTI, DICOM file or series folder, PNG, anything MONAI ``LoadImage`` reads) is loaded
with ``LoadImage(image_only=True)`` and its axis estimated with
:func:`mfassl_medical.axis.estimate_axis` in the world frame of the affine MONAI reports (RAS mm
for NIfTI). With ``--json`` one object per line::

    {"path", "dims", "normal", "offset", "confidence", "fallback", "seconds", "load_seconds"}

where ``normal . x = offset`` for world points ``x`` on the axis, ``seconds`` is the estimation
time and ``load_seconds`` the reading time. A file that cannot be read or estimated gives an
``error: PATH: ...`` line on stderr and exit code 1; the other files are still processed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

__all__ = ["main", "load_image", "write_overlay"]

logger = logging.getLogger(__name__)


def load_image(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` with MONAI ``LoadImage(image_only=True)``.

    Returns:
        ``(C, *S)`` float32 array (channel-first; a file without channels gets ``C = 1``) and the
        ``(4, 4)`` index -> world affine MONAI reports.
    """
    from monai.transforms import EnsureChannelFirst, LoadImage

    img = LoadImage(image_only=True)(path)
    img = EnsureChannelFirst()(img)
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
    """PNG of the image (2D) or three orthogonal centre slices (3D) with the axis drawn in red.

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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _png_path(out: str, path: str, many: bool) -> str:
    if not many and out.lower().endswith(".png"):
        return out
    stem = os.path.basename(os.path.normpath(path))
    for ext in (".nii.gz", ".nii", ".dcm", ".png", ".jpg"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return os.path.join(out, f"{stem}_axis.png")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mfassl_medical axis",
                                description="Estimate the symmetry axis (2D midline / 3D mid-sagittal plane) "
                                            "of image files in the world frame of their affine.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="NIfTI, DICOM file or series folder, PNG")
    p.add_argument("--json", action="store_true", help="one JSON object per line (default: a readable line)")
    p.add_argument("--png", metavar="OUT", help="overlay PNG: a .png file for one input, else a folder")
    p.add_argument("--method", default="auto", help="estimator name: auto, midline, msp, centre")
    p.add_argument("--min-confidence", type=float, default=None, help="fall back to the centre below this")
    p.add_argument("-v", "--verbose", action="store_true", help="log estimator warnings")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns 0 when every file was processed, 1 otherwise."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    from mfassl_medical.axis import DEFAULT_MIN_CONFIDENCE, estimate_axis

    min_conf = DEFAULT_MIN_CONFIDENCE if args.min_confidence is None else args.min_confidence
    failures = 0
    many = len(args.paths) > 1
    for path in args.paths:
        try:
            if not os.path.exists(path):
                raise FileNotFoundError("no such file or folder")
            t0 = time.perf_counter()
            data, affine = load_image(path)
            load_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            axis = estimate_axis(data, affine, method=args.method, min_confidence=min_conf, channel_first=True)
            est_s = time.perf_counter() - t1
        except Exception as e:  # report and go on with the next file
            failures += 1
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {path}: cannot process ({type(e).__name__}: {msg})", file=sys.stderr, flush=True)
            continue
        record = {"path": path, "dims": int(axis.dims), "normal": [float(v) for v in axis.normal],
                  "offset": float(axis.offset), "confidence": float(axis.confidence), "fallback": bool(axis.fallback),
                  "seconds": round(est_s, 6), "load_seconds": round(load_s, 6)}
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            n = ", ".join(f"{v:+.4f}" for v in axis.normal)
            print(f"{path}: {axis.dims}D axis n=({n}) offset={axis.offset:.3f} confidence={axis.confidence:.3f}"
                  f"{' FALLBACK' if axis.fallback else ''} ({est_s:.3f} s, load {load_s:.3f} s)", flush=True)
        if args.png:
            try:
                from mfassl_medical.axis._prepare import prepare

                prep = prepare(data, affine, channel_first=True)
                out = _png_path(args.png, path, many)
                write_overlay(out, prep.data, axis.to_index(prep.affine),
                              title=f"{os.path.basename(path)}  conf {axis.confidence:.2f}")
            except Exception as e:
                failures += 1
                print(f"error: {path}: cannot write the overlay ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
