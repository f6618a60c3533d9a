"""``python -m mfassl_faces axis IMAGE [IMAGE ...] --landmarks dlib|fan|file|FILE|DIR --json [--png OUT]``.

One JSON object per line and face: ``{"path", "normal", "offset", "confidence", "fallback",
"landmark_confidence", "detection_confidence", "missing_points", "reason", "landmarks", "seconds", "face",
"n_faces", "chosen_by", "box", "score"}`` in pixel coordinates (x = column, y = row): the axis is the line
``normal . (x, y) = offset`` with ``normal`` pointing to the image right. ``confidence`` is the landmark
symmetry confidence times the detection confidence (how sure the source is that it found a face);
``missing_points`` lists NaN landmarks left out of the estimate (their mirror pairs are dropped), and
``reason`` says why the image centre was used (``fallback``). ``face`` is the face's rank in the
source's answer (0 = the best: by detector score, see :mod:`mfassl_faces.sources`), ``n_faces`` how
many were found, ``box`` and ``score`` the detector's box and score (None for annotations), and
``chosen_by`` how this one was taken: ``best`` (the default), ``index`` (``--face-index K``), ``box``
(``--box x0,y0,x1,y1``: the face overlapping that box most) or ``all`` (``--all-faces``: one line per
face). The output is strict JSON (a non-finite number is written ``null``).

``--png OUT`` draws the landmarks and the axis: ``OUT`` is a ``.png`` file for one image, else a folder
with one overlay per image, named by :func:`mfassl.cli.overlay_paths` (``siteA/scan.png`` and
``siteB/scan.png`` give ``siteA_scan_axis.png`` and ``siteB_scan_axis.png``). Overlays are written atomically and
tagged as overlays (a PNG ``Software`` text), so a rerun replaces its own; an overlay that would be written over
an input (``f.png --png f.png``, or ``d/a.png d/a_axis.png --png d``) is refused, always, and one over an
existing file that is not an overlay of an axis command is refused unless ``--overwrite``.

Every input gets an answer or a one-line ``error: <file>: ...`` on stderr, and the rest go on: a
missing, corrupt, too small (e.g. 1 x 4000) image, a folder, a wrong landmark count, a face index out of
range or a box no face overlaps. The exit status is then 1; images with no face are skipped, counted
and reported, and the closing summary counts the images without the requested face apart from the
failed ones. Options are checked
before any file is read (an unknown source, ``--min-confidence`` outside [0, 1], ``--png FILE.png``
with several images, a refused overlay give exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from mfassl.cli import add_overwrite_option, check_overlays, check_png_target, json_line, overlay_paths, strict_json
from mfassl.files import OutputGuard, OutputRefusedError
from mfassl_faces.cli_options import SOURCE_NAMES, box_arg, check_device, float_arg, int_arg
from mfassl_faces.errors import FaceDataError

logger = logging.getLogger("mfassl_faces.axis")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mfassl_faces axis",
                                description="Symmetry axis of face images from their landmarks.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--landmarks", "--source", dest="landmarks", default="dlib",
                   help="landmark source: 'dlib', 'fan', 'file' (a .pts beside each image), or an existing "
                        "landmark FILE / folder of <image stem>.pts files (default: dlib)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (the default output)")
    p.add_argument("--png", metavar="OUT", help="draw landmarks and axis: a .png file (one image) or a folder")
    choose = p.add_mutually_exclusive_group()
    choose.add_argument("--all-faces", action="store_true", help="report every face, not only the best")
    choose.add_argument("--face-index", type=int_arg("--face-index", low=0), metavar="K",
                        help="report the K-th face, best first (0 = the best: by detector score)")
    choose.add_argument("--box", type=box_arg("--box"), metavar="X0,Y0,X1,Y1",
                        help="report the face overlapping this pixel box most")
    p.add_argument("--fan-weights", metavar="DIR", help="folder with s3fd-619a316812.pth and 2DFAN4-11f355bf06.pth.tar")
    p.add_argument("--device", default=None,
                   help="torch device of FAN (--landmarks fan): cpu, cuda, cuda:1... "
                        "(default: cuda if available, else cpu)")
    p.add_argument("--min-confidence", type=float_arg("--min-confidence", 0.0, 1.0), default=0.2,
                   help="in [0, 1]; below this the image centre is used (0.2)")
    add_overwrite_option(p, "an existing --png file that is not an overlay of an axis command")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def check_source_spec(spec: str) -> str:
    """``spec`` lower-cased if it names a source, as given if it is an existing path; else ``ValueError``."""
    if spec.lower() in SOURCE_NAMES:
        return spec.lower()
    if Path(spec).exists():
        return spec
    raise ValueError(f"unknown landmark source {spec!r}: use one of {', '.join(SOURCE_NAMES)}, or an existing "
                     "landmark file or folder.")


def _source(spec: str, fan_weights: str | None, device: str | None = None):
    from mfassl_faces.sources import create_source

    if spec == "fan":
        return create_source("fan", weights_dir=fan_weights, device=device or "cpu")
    if spec in SOURCE_NAMES:
        return create_source(spec)
    return create_source("file", path=spec)


class FaceChoiceError(FaceDataError):
    """Faces were found, but none is the one asked for (``--face-index`` beyond them, ``--box`` overlapping none)."""


def _answer(image_path: Path, source, args: argparse.Namespace, png: Path | None) -> str:
    """Process one image: print its JSON lines (and draw them into ``png``), return ``ok`` or ``noface``
    (errors raise)."""
    from mfassl_faces.axis import axis_from_landmarks, pixel_axis_fields
    from mfassl_faces.io import read_image
    from mfassl_faces.sources import choose_faces

    t0 = time.perf_counter()
    image = read_image(image_path)
    faces = source(image, image_path)
    if not faces:
        return "noface"
    try:
        chosen = choose_faces(faces, index=args.face_index, box=args.box, all_faces=args.all_faces)
    except LookupError as err:
        raise FaceChoiceError(str(err), image_path) from err
    lines, drawn = [], []
    for k, face, how in chosen:
        name = str(image_path) + (f" (landmarks {face.info['file']})" if "file" in face.info else "")
        axis = axis_from_landmarks(face.landmarks, face.schema, image.shape, min_confidence=args.min_confidence,
                                   detection_confidence=face.detection_confidence, name=name)
        rec = {"path": str(image_path), **pixel_axis_fields(axis), "landmarks": np.round(face.landmarks, 2).tolist(),
               "seconds": round(time.perf_counter() - t0, 3), "face": k, "n_faces": len(faces), "chosen_by": how,
               "box": None if face.box is None else [round(float(v), 2) for v in face.box],
               "score": None if face.score is None else round(float(face.score), 4)}
        lines.append(json_line(rec))
        drawn.append(strict_json(rec))
    if png is not None:
        from mfassl_faces.draw import draw_faces

        draw_faces(image, drawn, png)
    for line in lines:
        print(line, flush=True)
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    images = [Path(p) for p in args.images]
    pngs: list[Path | None] = [None] * len(images)
    try:
        args.landmarks = check_source_spec(args.landmarks)
        check_png_target(args.png, len(images), what="images")
        if args.png:
            pngs = [Path(p) for p in overlay_paths(args.png, images)]
            inputs = [*images, *([args.landmarks] if args.landmarks not in SOURCE_NAMES else [])]
            check_overlays(OutputGuard(inputs, overwrite=args.overwrite), args.png, images, pngs)
        device = check_device(args.device) if args.landmarks == "fan" else None
    except (ValueError, OutputRefusedError) as err:
        parser.error(str(err))
    try:
        source = (_source(args.landmarks, args.fan_weights) if device is None
                  else _source(args.landmarks, args.fan_weights, device))
    except (FileNotFoundError, ImportError, FaceDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_bad = n_noface = n_ok = n_choice = 0
    for image_path, png in zip(images, pngs):
        try:
            status = _answer(image_path, source, args, png)
        except FaceChoiceError as err:
            print(f"error: {err}", file=sys.stderr)
            n_choice += 1
            continue
        except FaceDataError as err:
            print(f"error: {err}", file=sys.stderr)
            n_bad += 1
            continue
        except Exception as err:  # one bad file costs one file: name it and go on
            logger.debug("traceback for %s", image_path, exc_info=True)
            reason = " ".join(str(err).split()) or "no message"
            print(f"error: {image_path}: {type(err).__name__}: {reason}", file=sys.stderr)
            n_bad += 1
            continue
        if status == "noface":
            print(f"warning: {image_path}: no face found; skipped.", file=sys.stderr)
            n_noface += 1
        else:
            n_ok += 1
    if n_noface or n_bad or n_choice:
        print(f"summary: {n_ok} processed, {n_noface} without a face (skipped), {n_choice} without the requested "
              f"face (--face-index / --box), {n_bad} failed (named above).", file=sys.stderr)
    return 1 if n_bad or n_choice else 0


if __name__ == "__main__":
    sys.exit(main())
