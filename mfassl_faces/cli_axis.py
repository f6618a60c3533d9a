"""``python -m mfassl_faces axis IMAGE [IMAGE ...] --landmarks dlib|fan|FILE --json [--png OUT] [--all-faces]``.

One JSON object per line and face: ``{"path", "normal", "offset", "confidence", "fallback",
"landmarks", "seconds"}`` in pixel coordinates (x = column, y = row): the axis is the line
``normal . (x, y) = offset`` with ``normal`` pointing to the image right. ``--all-faces`` prints
one line per face (with a ``face`` index), otherwise the largest face only. A bad file (missing,
corrupt, wrong landmark count) gives an error on stderr naming it; the other files are still
processed and the exit status is 1. Images with no face are skipped, counted and reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from mfassl_faces.axis import axis_from_landmarks, axis_to_pixel
from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import read_image
from mfassl_faces.sources import LANDMARK_SOURCES, create_source

logger = logging.getLogger("mfassl_faces.axis")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mfassl_faces axis",
                                description="Symmetry axis of face images from their landmarks.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--landmarks", default="dlib",
                   help="landmark source: 'dlib', 'fan', 'file' (a .pts beside each image), or a landmark "
                        "FILE / a folder of <image stem>.pts files (default: dlib)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (the default output)")
    p.add_argument("--png", metavar="OUT", help="draw landmarks and axis: a .png file (one image) or a folder")
    p.add_argument("--all-faces", action="store_true", help="report every face, not only the largest")
    p.add_argument("--fan-weights", metavar="DIR", help="folder with s3fd-619a316812.pth and 2DFAN4-11f355bf06.pth.tar")
    p.add_argument("--min-confidence", type=float, default=0.2, help="below this the image centre is used (0.2)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _source(spec: str, fan_weights: str | None):
    if spec.lower() == "fan":
        return create_source("fan", weights_dir=fan_weights)
    if spec.lower() == "file":
        return create_source("file")
    if spec.lower() in LANDMARK_SOURCES:
        return create_source(spec)
    return create_source("file", path=spec)


def _png_path(out: str, image: Path, many: bool) -> Path:
    o = Path(out)
    if many or o.is_dir() or o.suffix.lower() != ".png":
        return o / f"{image.stem}_axis.png"
    return o


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        source = _source(args.landmarks, args.fan_weights)
    except (FileNotFoundError, ImportError, FaceDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_bad = n_noface = n_ok = 0
    many = len(args.images) > 1
    for image_path in map(Path, args.images):
        t0 = time.perf_counter()
        try:
            image = read_image(image_path)
            faces = source(image, image_path)
        except FaceDataError as err:
            print(f"error: {err}", file=sys.stderr)
            n_bad += 1
            continue
        if not faces:
            print(f"warning: {image_path}: no face found; skipped.", file=sys.stderr)
            n_noface += 1
            continue
        chosen = faces if args.all_faces else faces[:1]
        drawn = []
        for k, face in enumerate(chosen):
            axis = axis_from_landmarks(face.landmarks, face.schema, image.shape, min_confidence=args.min_confidence)
            normal, offset = axis_to_pixel(axis)
            rec = {"path": str(image_path), "normal": [round(float(v), 6) for v in normal],
                   "offset": round(offset, 4), "confidence": round(float(axis.confidence), 4),
                   "fallback": bool(axis.fallback),
                   "landmarks": np.round(face.landmarks, 2).tolist(),
                   "seconds": round(time.perf_counter() - t0, 3)}
            if args.all_faces:
                rec["face"] = k
            print(json.dumps(rec), flush=True)
            drawn.append(rec)
        n_ok += 1
        if args.png:
            out = _png_path(args.png, image_path, many)
            out.parent.mkdir(parents=True, exist_ok=True)
            from mfassl_faces.draw import draw_faces

            draw_faces(image, drawn, out)
    if n_noface or n_bad:
        print(f"summary: {n_ok} processed, {n_noface} without a face (skipped), {n_bad} unreadable.", file=sys.stderr)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
