"""``python -m mfassl_faces landmarks DATASET_DIR --source NAME --workers N --out FILE [--device D --batch-size B]``.

Landmarks of every image under ``DATASET_DIR`` (recursively), in ``N`` processes, appended to
``FILE`` as JSON lines (:mod:`mfassl_faces.landmark_cache`); a rerun does only what is missing. The
face readers and ``python -m mfassl_faces pretrain --landmarks-file FILE`` take the file. Prints a
JSON summary on stdout; every failed image is named on stderr; the exit status is 1 when some
image failed or the disk is full (``no space left on FILE``), 2 for bad options (checked before any image
is read). ``--device`` runs FAN on that torch device and ``--batch-size`` sends that many images per call to
the source (FAN's landmarks then go through the network together); both need one process (``--workers`` 0 or
1) when above the defaults on a GPU.

``FILE`` is never an input (an image, an annotation file of ``--source file``: refused, exit status 2, even
with ``--overwrite``). An existing ``FILE`` is resumed only when it is a landmarks file (its last line, cut
short by a killed run, is repaired first); any other existing file (a JSON document, an image) is refused with
exit status 2 and left as it is, unless ``--overwrite``, which starts a new file in its place.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mfassl.cli import add_overwrite_option
from mfassl.files import NoSpaceError, OutputRefusedError
from mfassl_faces.cli_options import SOURCE_NAMES, check_device, int_arg
from mfassl_faces.errors import FaceDataError

logger = logging.getLogger("mfassl_faces.landmarks")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mfassl_faces landmarks",
                                description="Landmarks for a whole image folder (parallel, resumable, JSON lines).")
    p.add_argument("dataset_dir", metavar="DATASET_DIR")
    p.add_argument("--source", default="dlib", choices=SOURCE_NAMES,
                   help="landmark source: dlib (offline, default), fan (needs --fan-weights), file "
                        "(annotation files beside the images)")
    p.add_argument("--workers", type=int_arg("--workers", low=0, high=256), default=1,
                   help="processes (0 or 1: this process)")
    p.add_argument("--out", required=True, metavar="FILE", help="landmarks file (JSON lines); resumed when it exists")
    p.add_argument("--fan-weights", metavar="DIR", help="folder with the FAN weights (--source fan)")
    p.add_argument("--device", default=None,
                   help="torch device of FAN (--source fan): cpu, cuda, cuda:1... "
                        "(default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int_arg("--batch-size", low=1, high=4096), default=1,
                   help="images per source call, in one process (FAN batches their faces; 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_option(p, "an existing --out FILE that is not a landmarks file (a new file is started)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    from mfassl_faces.landmark_cache import compute_landmarks

    if args.source == "fan":
        try:
            device = check_device(args.device)
        except ValueError as err:
            parser.error(str(err))
        if args.workers > 1 and (device.startswith("cuda") or args.batch_size > 1):
            parser.error(f"--workers {args.workers}: FAN on {device} with --batch-size {args.batch_size} runs in one "
                         "process (a GPU is not shared by forked workers); use --batch-size for throughput.")
    elif args.device is not None:
        logger.warning("--device is used by --source fan only; the %s source runs on the CPU.", args.source)
    if args.batch_size > 1 and args.workers > 1:
        parser.error("--batch-size above 1 batches in one process; use --workers 0 or 1 with it.")
    kwargs = {"weights_dir": args.fan_weights, "device": device, "batch_size": args.batch_size} \
        if args.source == "fan" else {}
    if args.source == "fan":  # check the weights once here rather than in every worker
        from mfassl_faces.sources import check_fan_weights

        try:
            check_fan_weights(args.fan_weights)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        summary = compute_landmarks(args.dataset_dir, args.out, args.source, kwargs, workers=args.workers,
                                    progress=not args.no_progress, batch_size=args.batch_size,
                                    overwrite=args.overwrite)
    except NoSpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (FaceDataError, FileNotFoundError, ImportError, OutputRefusedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, reason in summary["failed"]:
        print(f"error: {path}: {reason}", file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k != "failed"}))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
