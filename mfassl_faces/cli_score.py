"""``python -m mfassl_faces score``: score landmark predictions against a data set's annotations with the
benchmark's metrics, so that any model (dlib, FAN, your own) goes in the same table.

::

    python -m mfassl_faces score PREDICTIONS (--wflw-test FILE [--wflw-images DIR] | --data DIR [--split S]) \\
        [--threshold 0.1] [--normalization inter-ocular|inter-pupil|box] [--missing error|skip|fail] [--one-based]
    python -m mfassl_faces score --source dlib|fan [--fan-weights DIR --device D --batch-size B] (ground truth as above)

``PREDICTIONS`` is a prediction file (:mod:`mfassl_faces.predictions`: JSON lines, JSON or CSV of per-face
points in 0-based image pixels; the ``landmarks`` command's output and the benchmark's ``predictions.jsonl``
are such files). ``--source`` instead runs a landmark source inside each annotated face's box (WFLW's box;
on 300W the box of the ground-truth points, as papers do) and writes its answers to
``OUT/predictions.jsonl`` before scoring them. The ground truth is a WFLW annotation file (the six WFLW
subsets are reported), a folder of ``.pts`` files (``--split all``, the default), or 300W's standard test
sets (``--split 300w``: common, challenging and full; ``--split 300w-private``: indoor, outdoor and both).

Prints the table (NME and FR in percent) and then one JSON line; writes ``OUT/score.json``,
``OUT/face_errors.jsonl`` (each face's NME) and ``OUT/ced.png``, atomically (:mod:`mfassl.files`). Exit status
0, 1 for a data error (named), 2 for bad options or an output file that is ``PREDICTIONS`` or ``--wflw-test``
(checked before any file is read).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from mfassl_faces.cli_options import NORMALIZATION_NAMES, check_device, float_arg, int_arg
from mfassl_faces.errors import FaceDataError

logger = logging.getLogger("mfassl_faces.score")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mfassl_faces score",
                                description="Score landmark predictions (a file, or dlib / FAN inside the annotated "
                                            "boxes) against WFLW or 300W annotations.")
    p.add_argument("predictions", nargs="?", metavar="PREDICTIONS",
                   help="prediction file: .jsonl / .json / .csv of per-face points, 0-based image pixels")
    gt = p.add_argument_group("ground truth")
    gt.add_argument("--wflw-test", metavar="FILE", help="WFLW list_98pt_rect_attr_test.txt (or the train list)")
    gt.add_argument("--wflw-images", metavar="DIR", help="WFLW_images folder (default: the annotation file's folder)")
    gt.add_argument("--data", metavar="DIR", help="a folder of <image> + <image>.pts (300W layout)")
    gt.add_argument("--split", default="all", choices=("all", "300w", "300w-private"),
                    help="with --data: all (every .pts in the folder), 300w (the common, challenging and full test "
                         "sets of the iBUG layout), 300w-private (300W/01_Indoor and 02_Outdoor)")
    src = p.add_argument_group("a landmark source instead of a file")
    src.add_argument("--source", choices=("dlib", "fan"),
                     help="run this source inside each annotated face's box (WFLW's; 300W: the ground-truth "
                          "points' box)")
    src.add_argument("--fan-weights", metavar="DIR", help="folder with 2DFAN4-11f355bf06.pth.tar (--source fan)")
    src.add_argument("--device", default=None, help="torch device of FAN: cpu, cuda, cuda:1... (default: cuda if "
                                                    "available, else cpu)")
    src.add_argument("--batch-size", type=int_arg("--batch-size", low=1, high=4096), default=8,
                     help="images per source call; FAN runs their faces through the network together (8)")
    src.add_argument("--flip-input", action="store_true", help="FAN: average with the mirrored crop")
    m = p.add_argument_group("metrics")
    m.add_argument("--threshold", type=float_arg("--threshold", 1e-6, 1.0), default=0.1,
                   help="NME threshold of the failure rate and the AUC (0.1; 0.08 is also common)")
    m.add_argument("--normalization", default="inter-ocular", choices=NORMALIZATION_NAMES,
                   help="NME normaliser: inter-ocular (outer eye corners; default), inter-pupil, box (sqrt(w*h) of "
                        "the ground-truth points' box)")
    m.add_argument("--missing", default="error", choices=("error", "skip", "fail"),
                   help="a face without a finite prediction: error (refuse, the default), skip (leave it out), fail "
                        "(count it as a failure)")
    m.add_argument("--one-based", action="store_true", help="the prediction file's coordinates are 1-based (as .pts)")
    m.add_argument("--n-boot", type=int_arg("--n-boot", low=1, high=100000), default=1000,
                   help="bootstrap resamples of the 95%% intervals (1000)")
    p.add_argument("--seed", type=int_arg("--seed", low=0), default=0, help="bootstrap seed")
    p.add_argument("--out", default=None, help="output folder (default outputs/faces_score)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (--source)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse contradictory options (exit status 2) before any file is read."""
    if (args.predictions is None) == (args.source is None):
        parser.error("give either a PREDICTIONS file or --source dlib|fan.")
    if bool(args.wflw_test) == bool(args.data):
        parser.error("give the ground truth: either --wflw-test FILE or --data DIR.")
    if args.wflw_images and not args.wflw_test:
        parser.error("--wflw-images goes with --wflw-test.")
    if args.split != "all" and not args.data:
        parser.error(f"--split {args.split} reads --data, the 300W root.")
    if args.source is None:
        for flag, value in (("--fan-weights", args.fan_weights), ("--device", args.device), ("--flip-input",
                                                                                            args.flip_input)):
            if value:
                parser.error(f"{flag} goes with --source.")
    if args.source is not None and args.one_based:
        parser.error("--one-based describes a PREDICTIONS file, not --source.")
    if args.source == "fan":
        try:
            args.device = check_device(args.device)
        except ValueError as err:
            parser.error(str(err))
        from mfassl_faces.sources import check_fan_weights

        try:
            check_fan_weights(args.fan_weights, ("landmarks",))
        except FileNotFoundError as err:
            parser.error(str(err))
    elif args.source == "dlib" and args.device is not None:
        logger.warning("--device is used by --source fan only; dlib runs on the CPU.")


def ground_truth(args: argparse.Namespace):
    """``(records, schema, subsets, image root)`` of the chosen annotations."""
    from mfassl_faces.readers import WFLW_ATTRIBUTES, read_300w_folder, read_wflw_annotations

    if args.wflw_test:
        root = Path(args.wflw_images) if args.wflw_images else Path(args.wflw_test).parent
        return read_wflw_annotations(args.wflw_test, root), "wflw98", WFLW_ATTRIBUTES, root
    if args.split == "all":
        records = read_300w_folder(args.data)
        if not records:
            raise FaceDataError("no image with a .pts beside it in this folder.", args.data)
        return records, "ibug68", (), Path(args.data)
    from mfassl_faces.protocols import read_protocol

    split = read_protocol(args.split, args.data)
    return split.test, split.schema, split.subsets, Path(args.data)


def run_source(args: argparse.Namespace, records: Sequence[Any], schema: str, root: Path) -> list[dict[str, Any]]:
    """The source's landmarks inside every annotated face's box, as prediction rows (errors name the image
    on stderr; its faces are left without a prediction)."""
    from mfassl_faces.io import read_image
    from mfassl_faces.predictions import image_key
    from mfassl_faces.readers import face_box
    from mfassl_faces.sources import create_source

    kwargs: dict[str, Any] = {}
    if args.source == "fan":
        kwargs = dict(weights_dir=args.fan_weights, device=args.device, batch_size=args.batch_size,
                      flip_input=args.flip_input, detect_faces=False)
    source = create_source(args.source, **kwargs)
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_image[image_key(rec.image, root)].append(i)
    keys = list(by_image)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(keys), desc=f"{args.source} in boxes", unit="img", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(keys), args.batch_size):
        chunk, images, boxes, paths = [], [], [], []
        for key in keys[start:start + args.batch_size]:
            path = records[by_image[key][0]].image
            try:
                images.append(read_image(path))
            except FaceDataError as err:
                print(f"error: {err}", file=sys.stderr)
                continue
            chunk.append(key)
            paths.append(path)
            boxes.append([records[i].box if records[i].box is not None else face_box(records[i].landmarks, schema)
                          for i in by_image[key]])
        try:
            answers = source.landmarks_in_boxes_batch(images, boxes, paths)
        except FaceDataError as err:
            print(f"error: {err}", file=sys.stderr)
            answers = [[] for _ in images]
        for key, faces in zip(chunk, answers):
            for k, face in enumerate(faces):
                rows.append({"image": key, "face": k, "landmarks": face.landmarks.round(4).tolist(),
                             "box": [round(float(v), 3) for v in face.box], "schema": face.schema,
                             "score": face.score, "box_from": face.info.get("box_from")})
        if bar is not None:
            bar.update(len(keys[start:start + args.batch_size]))
    if bar is not None:
        bar.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    check_args(parser, args)
    import numpy as np

    from mfassl.cli import json_line, strict_json
    from mfassl.files import OutputGuard, OutputRefusedError, write_json
    from mfassl_faces.metrics import plot_ced
    from mfassl_faces.predictions import (PredictedFace, read_predictions, score_predictions, write_predictions)
    from mfassl_faces.report import format_landmark_table

    out = Path(args.out) if args.out else Path("outputs") / "faces_score"
    guard = OutputGuard([p for p in (args.predictions, args.wflw_test) if p])
    try:  # the folder's files are this command's own (a rerun replaces them), but never an input
        for name in ("score.json", "face_errors.jsonl", "ced.png", *(["predictions.jsonl"] if args.source else [])):
            guard.check(out / name, "--out", value=out, what=name, recognise=lambda p: None)
    except OutputRefusedError as err:
        parser.error(str(err))
    try:
        records, schema, subsets, root = ground_truth(args)
        if args.source is not None:
            rows = run_source(args, records, schema, root)
            pred_file = write_predictions(out / "predictions.jsonl", rows)
            predictions = [PredictedFace(r["image"], np.asarray(r["landmarks"]), r["face"], None,
                                         f"{pred_file}: line {k + 1}") for k, r in enumerate(rows)]
        else:
            pred_file = Path(args.predictions)
            predictions = read_predictions(pred_file, one_based=args.one_based)
        report, faces = score_predictions(records, root, predictions, schema, subsets, args.normalization,
                                          args.threshold, args.missing, args.n_boot, args.seed)
    except (FaceDataError, FileNotFoundError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if report["unmatched"]:
        logger.warning("%d prediction(s) of %s match no annotated face (other images, or no overlapping box).",
                       report["unmatched"], pred_file)
    report.update(predictions=str(pred_file), source=args.source,
                  ground_truth=args.wflw_test or args.data, split=None if args.wflw_test else args.split)
    out.mkdir(parents=True, exist_ok=True)
    errors = np.array([np.inf if f["nme"] is None else f["nme"] for f in faces])
    curves = {"full": errors}
    for name in subsets:
        member = np.array([name in f["subsets"] for f in faces])
        if member.any():
            curves[name] = errors[member]
    plot_ced(curves, out / "ced.png", args.threshold, title=f"CED ({Path(str(pred_file)).name})",
             normalization=args.normalization)
    report["ced_png"] = str(out / "ced.png")
    write_predictions(out / "face_errors.jsonl", ({k: f[k] for k in ("image", "face", "nme", "subsets")} for f in faces))
    write_json(out / "score.json", strict_json(report), indent=1, allow_nan=False)
    name = args.source or Path(args.predictions).name
    print(format_landmark_table(report, f"{name}: NME normalised by the {args.normalization} distance "
                                        f"({report['schema']} points)"))
    print(json_line({k: report[k] for k in ("n", "n_annotated", "n_missing", "n_failed", "unmatched", "schema",
                                            "normalization", "threshold", "nme", "fr", "auc", "subsets", "predictions",
                                            "ced_png")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
