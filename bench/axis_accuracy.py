"""Axis estimation accuracy and speed: MNI152 under random rigid motion with corruptions, the synthetic
chest demo radiographs against their known midlines, real-data flip consistency, and the image-centre
baseline (the published behaviour).

    python bench/axis_accuracy.py [--trials 10] [--chest 120] [--write]

Cases: nilearn's exactly symmetric MNI152 2009a T1 at 1 mm and 2 mm, moved by a random rigid
transform (rotations uniform in +-30 degrees about each axis, shifts +-15 mm), then a smooth
multiplicative bias field that differs between the hemispheres, Gaussian noise (3% of the white
matter intensity), three zeroed slices and a bright one-sided spherical lesion. The true plane is
the template's x = 0 moved by the transform. 2D rows: axial slices of volumes moved by rotations
about x and z only (so the slice is perpendicular to the true plane and exactly symmetric).
Chest rows: the demo chest set (``build_demo_data(n_chexpert=N, seed=0)``, 256 px PNGs: varied habitus,
AP and PA views, rotations up to 8 degrees, a one-sided opacity on two images in three), the midline
estimated on the full image against the builder's true midline (offset in pixels at the image centre).
Errors: angle between normals (degrees); offset = distance between the planes at the brain centre
(mm). Seconds: estimation only, one CPU thread, inside this process (the volume already in memory).
``--write`` replaces the "Axis accuracy" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.ndimage import map_coordinates  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from mfassl.geometry import SymmetryAxis2D, SymmetryPlane3D  # noqa: E402
from mfassl_medical.axis import estimate_centre, estimate_midline, estimate_midsagittal_plane  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
SECTION = "## Axis accuracy (`bench/axis_accuracy.py`)"


def load_mni(res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_template

    im = load_mni152_template(resolution=res)
    v = np.asarray(im.dataobj, dtype=np.float32)
    grid = np.argwhere(v > 0.2).astype(float)
    centre = (grid @ im.affine[:3, :3].T + im.affine[:3, 3]).mean(0)  # brain centre, template world
    return v, im.affine, centre


def make_case(v: np.ndarray, aff: np.ndarray, centre: np.ndarray, rng: np.random.Generator, mode: str):
    """Moved and corrupted copy of the template on its own grid, the true plane, the moved brain centre."""
    if mode == "3d":
        angles = rng.uniform(-30, 30, 3)
    else:  # rotations about x and z keep axial slices perpendicular to the plane
        angles = np.array([rng.uniform(-30, 30), 0.0, rng.uniform(-30, 30)])
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    t = rng.uniform(-15, 15, 3)
    shape = v.shape
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    y = grid @ aff[:3, :3].T + aff[:3, 3]
    x = (y - t) @ rot  # template world point shown at y
    inv = np.linalg.inv(aff)
    out = map_coordinates(v, (x @ inv[:3, :3].T + inv[:3, 3]).T, order=1).reshape(shape).astype(np.float32)
    xb = x.reshape(*shape, 3)
    bias = np.exp(0.15 * np.tanh(xb[..., 0] / 25.0) + 0.1 * np.sin(xb[..., 1] / 60.0) + 0.05 * xb[..., 2] / 80.0)
    out *= bias.astype(np.float32)
    side = rng.choice([-1.0, 1.0])
    les = rot @ np.array([side * rng.uniform(20, 45), rng.uniform(-50, 20), rng.uniform(0, 40)]) + t
    r = rng.uniform(6, 12)
    out[np.sum((y.reshape(*shape, 3) - les) ** 2, -1) < r * r] = 1.6
    out += rng.normal(0, 0.03, shape).astype(np.float32)
    zero_axis = 2 if mode == "3d" else 1
    for k in rng.choice(shape[zero_axis], 3, replace=False):
        np.moveaxis(out, zero_axis, 0)[k] = 0.0
    n = rot @ np.array([1.0, 0.0, 0.0])
    return out, SymmetryPlane3D(normal=n, offset=float(n @ t)), rot @ centre + t


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def summarise(name: str, angles: list[float], offsets: list[float], secs: list[float], unit: str = "mm") -> dict:
    a = np.asarray(angles)
    return {"name": name, "n": len(a), "med_angle": float(np.median(a)), "p90_angle": float(np.percentile(a, 90)),
            "p95_angle": float(np.percentile(a, 95)),
            "max_angle": float(a.max()), "med_off": float(np.median(offsets)), "unit": unit,
            "med_s": float(np.median(secs)) if secs else float("nan")}


def run_3d(res: int, trials: int, rng: np.random.Generator) -> list[dict]:
    v, aff, centre = load_mni(res)
    estimate_midsagittal_plane(v, aff)  # warm-up (imports, caches)
    ours, base = ([], [], []), ([], [], [])
    for _ in range(trials):
        vol, truth, c = make_case(v, aff, centre, rng, "3d")
        est, s = timed(estimate_midsagittal_plane, vol, aff)
        cen, s0 = timed(estimate_centre, vol, aff)
        for acc, e, sec in ((ours, est, s), (base, cen, s0)):
            acc[0].append(truth.angle_to(e))
            acc[1].append(truth.distance_at(e, c))
            acc[2].append(sec)
    return [summarise(f"MNI152 T1 {res} mm, 3D plane: ours", *ours),
            summarise(f"MNI152 T1 {res} mm, 3D plane: image centre", *base)]


def run_2d(res: int, trials: int, rng: np.random.Generator) -> list[dict]:
    v, aff, centre = load_mni(res)
    ours, base = ([], [], []), ([], [], [])
    warm = False
    for _ in range(trials):
        vol, truth, c = make_case(v, aff, centre, rng, "2d")
        for zw in (-10.0, 10.0, 30.0):  # world z of the axial slice (template frame, before the shift)
            k = int(np.clip(round((zw + c[2] - centre[2] - aff[2, 3]) / aff[2, 2]), 0, vol.shape[2] - 1))
            sl = vol[:, :, k]
            a2 = np.array([[aff[0, 0], aff[0, 1], aff[0, 2] * k + aff[0, 3]],
                           [aff[1, 0], aff[1, 1], aff[1, 2] * k + aff[1, 3]], [0.0, 0.0, 1.0]])
            zwld = aff[2, 2] * k + aff[2, 3]
            line = SymmetryAxis2D(normal=truth.normal[:2], offset=truth.offset - truth.normal[2] * zwld)
            if not warm:
                estimate_midline(sl, a2)
                warm = True
            est, s = timed(estimate_midline, sl, a2)
            cen, s0 = timed(estimate_centre, sl, a2)
            cc = line.closest_point(c[:2])
            for acc, e, sec in ((ours, est, s), (base, cen, s0)):
                acc[0].append(line.angle_to(e))
                acc[1].append(line.distance_at(e, cc))
                acc[2].append(sec)
    return [summarise(f"MNI152 T1 {res} mm, 2D axial slices: ours", *ours),
            summarise(f"MNI152 T1 {res} mm, 2D axial slices: image centre", *base)]


def chest_rows(n_images: int) -> list[dict]:
    """The demo chest radiographs: estimated and image-centre midlines against the builder's truth."""
    import csv
    import tempfile

    from PIL import Image

    from mfassl_medical.demo_data import build_demo_data

    ours, base = ([], [], []), ([], [], [])
    with tempfile.TemporaryDirectory(prefix="mfassl-axis-bench-") as tmp:
        paths = build_demo_data(os.path.join(tmp, "demo"), n_brats=0, n_chexpert=n_images, seed=0)
        with open(paths.chexpert_truth, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            img = np.asarray(Image.open(paths.root / r["path"]).convert("L"), np.float32) / 255.0
            # truth n.(x, y) = d with x = column, y = row; the array is (row, col)
            truth = SymmetryAxis2D(normal=[float(r["midline_normal_xy_1"]), float(r["midline_normal_xy_0"])],
                                   offset=float(r["midline_offset_px"]))
            c = truth.closest_point((np.array(img.shape) - 1) / 2.0)
            est, s = timed(lambda x: estimate_midline(x, split_dim=1), img)
            cen, s0 = timed(lambda x: estimate_centre(x, split_dim=1), img)
            for acc, e, sec in ((ours, est, s), (base, cen, s0)):
                acc[0].append(truth.angle_to(e))
                acc[1].append(truth.distance_at(e, c))
                acc[2].append(sec)
    name = f"demo chest radiographs 256 px ({n_images}), 2D midline"
    return [summarise(f"{name}: ours", *ours, unit="px"), summarise(f"{name}: image centre", *base, unit="px")]


def flip_rows() -> list[dict]:
    import nibabel
    import pydicom
    from pydicom.data import get_testdata_file

    def flip(shape, k):
        m = np.eye(len(shape) + 1)
        m[k, k] = -1.0
        m[k, -1] = shape[k] - 1.0
        return m

    rows = []
    img = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm")).pixel_array.astype(np.float32)
    a, s = timed(estimate_midline, img)
    b = estimate_midline(img[:, ::-1].copy())
    e = a.transform(flip(img.shape, 1))
    c = (np.array(img.shape) - 1) / 2
    rows.append({"name": "RG1_UNCI.dcm chest CR 1955x1841: flip consistency, ours", "n": 1,
                 "med_angle": e.angle_to(b), "p90_angle": e.angle_to(b), "p95_angle": e.angle_to(b),
                 "max_angle": e.angle_to(b), "med_off": e.distance_at(b, c), "unit": "px", "med_s": s})
    ce = estimate_centre(img)
    rows.append({"name": "RG1_UNCI.dcm: ours vs image centre (disagreement)", "n": 1,
                 "med_angle": a.angle_to(ce), "p90_angle": a.angle_to(ce), "p95_angle": a.angle_to(ce),
                 "max_angle": a.angle_to(ce),
                 "med_off": a.distance_at(ce, c), "unit": "px", "med_s": float("nan")})
    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "example4d.nii.gz")
    vol = np.moveaxis(np.asarray(nibabel.load(path).dataobj, dtype=np.float32), -1, 0)
    a, s = timed(lambda x: estimate_midsagittal_plane(x, channel_first=True), vol)
    b = estimate_midsagittal_plane(vol[:, ::-1].copy(), channel_first=True)
    e = a.transform(flip(vol.shape[1:], 0))
    c = (np.array(vol.shape[1:]) - 1) / 2
    rows.append({"name": "example4d EPI 128x96x24: flip consistency, ours", "n": 1, "med_angle": e.angle_to(b),
                 "p90_angle": e.angle_to(b), "p95_angle": e.angle_to(b), "max_angle": e.angle_to(b),
                 "med_off": e.distance_at(b, c), "unit": "vox", "med_s": s})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | n | median angle (deg) | p90 angle (deg) | p95 angle (deg) | max angle (deg) | median offset "
             "| median s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sec = "-" if not np.isfinite(r["med_s"]) else f"{r['med_s']:.3f}"
        lines.append(f"| {r['name']} | {r['n']} | {r['med_angle']:.3f} | {r['p90_angle']:.3f} | {r['p95_angle']:.3f} "
                     f"| {r['max_angle']:.3f} "
                     f"| {r['med_off']:.3f} {r['unit']} | {sec} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10, help="random transforms per 3D resolution")
    p.add_argument("--trials-2d", type=int, default=4, help="random transforms per 2D resolution (3 slices each)")
    p.add_argument("--chest", type=int, default=120, help="demo chest radiographs (0: skip the chest rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="write the section of bench/RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    rows = []
    for res in (1, 2):
        rows += run_3d(res, args.trials, rng)
    for res in (1, 2):
        rows += run_2d(res, args.trials_2d, rng)
    if args.chest > 0:
        rows += chest_rows(args.chest)
    rows += flip_rows()
    text = table(rows)
    print(text)
    ours1 = rows[0]
    verdict = []
    for label, val, target in (("median angle", ours1["med_angle"], 0.1), ("p95 angle", ours1["p95_angle"], 0.3),
                               ("median offset", ours1["med_off"], 0.1), ("seconds per 1 mm volume", ours1["med_s"], 0.15)):
        verdict.append(f"{label} {val:.3f} (target <= {target}): {'met' if val <= target else 'NOT met'}")
    print("\n".join(verdict))
    if args.write:
        body = (f"{SECTION}\n\n"
                f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} cores shared with other "
                f"jobs), one thread, seed {args.seed}, {args.trials} random rigid transforms per 3D row, "
                f"{args.trials_2d} x 3 slices per 2D row, {args.chest} demo chest radiographs (demo seed 0); whole "
                f"run {time.time() - t0:.0f} s. Offsets are at the brain centre (mm) for MNI rows, at the image centre "
                "(px) for the demo chest rows, in pixels/voxels for the flip rows. Corruptions: bias field differing "
                "between hemispheres, 3% noise, 3 zeroed slices, a bright one-sided lesion. Seconds: estimation "
                "only, volume in memory.\n\n"
                f"{text}\n\nIssue targets on the 1 mm volumes: " + "; ".join(verdict) + ".\n")
        with open(RESULTS) as f:
            cur = f.read()
        pat = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
        new = pat.sub(lambda _: body, cur) if SECTION in cur else cur.rstrip() + "\n\n" + body
        with open(RESULTS, "w") as f:
            f.write(new)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
