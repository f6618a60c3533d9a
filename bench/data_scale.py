"""Seconds to the first batch and peak memory of the pretraining bundles' data path as the data set grows.

Usage::

    python bench/data_scale.py [--bundles chexpert,brats] [--large] [--memory-baseline] [--write]

Synthetic files in the exact real layouts are written once under ``--root`` (default a temporary folder):
CheXpert-v1.0-small (``train.csv`` and ``train/patientNNNNN/study1/view1_frontal.jpg``, 320x390 8-bit JPGs)
with N = 48, 480, 4,800 images (``--large``: also 48,000), and BraTS 2021 case folders (4 modalities and a
seg, 240x240x155 int16 ``.nii.gz``) with 12 and 120 cases (``--large``: 1,200). A few distinct images are
drawn and hard-linked under every name, so writing the data is quick; every path is a separate item for the
data lists and the cache.

Each variant runs in its own subprocess: it parses the bundle's ``train.json`` with ``dataset_dir`` set,
builds the data list, the dataset and the ``DataLoader`` exactly as a run does, and takes the first batch.
"first batch" is the wall time from starting the subprocess (Python start-up and imports included) to that
batch; the trainer and network are not built (their cost does not depend on N). The table also splits it:
building the data list and the dataset (where an in-memory cache computes everything), and from the built
loader to the first batch (where the lazy disk cache computes one batch). Peak RSS is the largest resident
memory of the main process and of the main process plus its DataLoader workers (sampled every 50 ms; pages
the forked workers share with the main process are counted in each). Variants: ``disk`` (the default for a real ``dataset_dir``: lazy ``PersistentDataset``, default
workers) with an empty cache (cold) and again with the cache the cold run left (warm); with
``--memory-baseline`` also ``memory`` (``CacheDataset`` of everything, 0 workers: the previous default) at
the two smallest CheXpert N and the smallest BraTS N. "warm" is a second run on the cache the cold run left,
which holds only the items of its first batch (a shuffled first batch mostly needs others): the rate on a
filled cache is what ``bench/data_throughput.py`` measures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

BUNDLES = {"chexpert": "mfassl_chexpert_pretrain", "brats": "mfassl_brats_pretrain"}
SIZES = {"chexpert": [48, 480, 4800], "brats": [12, 120]}
LARGE = {"chexpert": 48000, "brats": 1200}
BATCH = {"chexpert": 16, "brats": 4}
DISTINCT = {"chexpert": 16, "brats": 3}


# ------------------------------------------------------------------------------------------ synthetic data
def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def chexpert_pool(pool: Path, k: int, seed: int = 0) -> list[Path]:
    """``k`` distinct 320x390 chest-like JPGs (two bright lungs, symmetric about a tilted midline)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    h, w = 390, 320
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(k):
        f = pool / f"cxr{i}.jpg"
        out.append(f)
        if f.exists():
            continue
        c, tilt = w / 2 + rng.uniform(-12, 12), rng.uniform(-0.05, 0.05)
        x = xx - (c + tilt * (yy - h / 2))
        img = sum(np.exp(-(((x - s * 70) / 45) ** 2 + ((yy - h * 0.5) / 120) ** 2)) for s in (-1, 1))
        img = np.clip(40 + img * 170 + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(f, quality=90)
    return out


def write_chexpert(root: Path, n: int, pool: list[Path]) -> Path:
    """``root/CheXpert-v1.0-small`` with ``n`` frontal images (patient/study/view layout) and ``train.csv``."""
    from mfassl.files import atomic_path
    from mfassl_medical.data.chexpert import CHEXPERT_LABELS

    ds = root / "CheXpert-v1.0-small"
    if (ds / "train.csv").is_file():
        return ds
    rows = []
    for i in range(n):
        rel = f"CheXpert-v1.0-small/train/patient{i // 2 + 1:05d}/study{i % 2 + 1}/view1_frontal.jpg"
        _link(pool[i % len(pool)], root / rel)
        rows.append([rel, "Female", 60, "Frontal", "AP", "1.0", *([""] * (len(CHEXPERT_LABELS) - 1))])
    with atomic_path(ds / "train.csv", durable=False) as tmp, open(tmp, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS])
        wr.writerows(rows)
    return ds


def brats_pool(pool: Path, k: int, seed: int = 0) -> list[dict[str, Path]]:
    """``k`` distinct synthetic cases: 240x240x155 int16 heads (an ellipsoid with a symmetric inner structure,
    rotated a little about z) in four contrasts and a seg, 1 mm, RAS affine."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    cases = []
    shape = (240, 240, 155)
    g = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in shape], indexing="ij"))
    for i in range(k):
        files = {m: pool / f"case{i}" / f"case{i}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")}
        cases.append(files)
        if all(f.exists() for f in files.values()):
            continue
        a = np.deg2rad(rng.uniform(-8, 8))
        x = np.cos(a) * g[0] - np.sin(a) * g[1] + rng.uniform(-6, 6)
        y = np.sin(a) * g[0] + np.cos(a) * g[1]
        z = g[2]
        head = ((x / 70) ** 2 + (y / 90) ** 2 + (z / 65) ** 2) < 1
        inner = np.exp(-(((np.abs(x) - 25) / 12) ** 2 + (y / 40) ** 2 + (z / 30) ** 2))
        aff = np.diag([1.0, 1.0, 1.0, 1.0])
        aff[:3, 3] = -(np.asarray(shape) - 1) / 2
        for j, m in enumerate(("t1", "t1ce", "t2", "flair")):
            vol = head * (300 + 100 * j) + inner * (400 - 80 * j) + rng.normal(0, 10, shape) * head
            files[m].parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(vol.astype(np.int16), aff), str(files[m]))
        seg = ((((x - 30) / 10) ** 2 + (y / 10) ** 2 + (z / 10) ** 2) < 1).astype(np.uint8) * 2
        nib.save(nib.Nifti1Image(seg, aff), str(files["seg"]))
    return cases


def write_brats(root: Path, n: int, pool: list[dict[str, Path]]) -> Path:
    """``root/BraTS2021`` with ``n`` case folders ``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``."""
    ds = root / "BraTS2021"
    for i in range(n):
        case = f"BraTS2021_{i:05d}"
        for m, src in pool[i % len(pool)].items():
            _link(src, ds / case / f"{case}_{m}.nii.gz")
    return ds


# ------------------------------------------------------------------------------------------ one variant
def child(spec: dict) -> None:
    """Build the bundle's DataLoader and time its first batch (run in a subprocess)."""
    import psutil

    me = psutil.Process()
    peak = {"main": 0, "total": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                main = me.memory_info().rss
                kids = sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            peak["main"] = max(peak["main"], main)
            peak["total"] = max(peak["total"], main + kids)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    from monai.bundle import ConfigParser

    bundle = ROOT / "bundles" / BUNDLES[spec["bundle"]]
    p = ConfigParser()
    p.read_config(str(bundle / "configs" / "train.json"))
    p.update({"bundle_root": str(bundle), "dataset_dir": spec["dataset_dir"], "output_dir": spec["output_dir"],
              "batch_size": BATCH[spec["bundle"]], "progress": False, **spec.get("overrides", {})})
    t_data = time.time()
    loader = p.get_parsed_content("train#dataloader")
    t_ready = time.time()
    batch = next(iter(loader))
    t_first = time.time()
    time.sleep(0.1)
    stop.set()
    import resource

    main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"t_data": t_data, "t_ready": t_ready, "t_first": t_first,
                                  "shape": list(batch["image"].shape), "rss_main": max(main_peak, peak["main"]),
                                  "rss_total": max(peak["total"], main_peak),
                                  "workers": int(loader.num_workers), "dataset": type(loader.dataset.dataset).__name__}),
          flush=True)
    os._exit(0)


def run_variant(spec: dict, timeout: int = 1800) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"variant {spec} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(line[7:])
    r.update(first_batch_s=r["t_first"] - t0, build_s=r["t_ready"] - r["t_data"], batch_s=r["t_first"] - r["t_ready"])
    return r


# ------------------------------------------------------------------------------------------ the table
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="chexpert,brats")
    ap.add_argument("--root", default=None, help="where the synthetic data sets go (default: a temporary folder)")
    ap.add_argument("--large", action="store_true", help="also 48,000 images / 1,200 cases")
    ap.add_argument("--memory-baseline", action="store_true", help="also the in-memory CacheDataset at the 2 smallest N")
    ap.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    import torch

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="mfassl_scale_"))
    rows = []
    for b in args.bundles.split(","):
        sizes = SIZES[b] + ([LARGE[b]] if args.large else [])
        t = time.time()
        pool = chexpert_pool(root / "pool_cxr", DISTINCT[b]) if b == "chexpert" else brats_pool(root / "pool_brats",
                                                                                                 DISTINCT[b])
        print(f"[{b}] synthetic pool written in {time.time() - t:.1f} s", flush=True)
        for n in sizes:
            data = write_chexpert(root / f"{b}_{n}", n, pool) if b == "chexpert" else write_brats(root / f"{b}_{n}", n, pool)
            out = root / f"runs_{b}_{n}"
            shutil.rmtree(out, ignore_errors=True)
            variants = [("disk", "cold", {}), ("disk", "warm", {})]
            if args.memory_baseline and (n in SIZES[b][:2] if b == "chexpert" else n == SIZES[b][0]):
                variants.append(("memory", "-", {"cache": "memory", "num_workers": 0}))
            for cache, state, ov in variants:
                spec = {"bundle": b, "dataset_dir": str(data), "output_dir": str(out / ("pretrain" if cache == "disk"
                                                                                        else "mem")), "overrides": ov}
                r = run_variant(spec)
                r.update(bundle=b, n=n, cache=cache, state=state)
                rows.append(r)
                print(f"[{b}] N={n:6d} {cache:6s} {state:4s}: first batch {r['first_batch_s']:6.1f} s "
                      f"(data list + dataset {r['build_s']:.1f} s, batch {r['batch_s']:.1f} s), peak RSS "
                      f"{r['rss_main'] / 2**20:.0f} MB main, {r['rss_total'] / 2**20:.0f} MB with workers "
                      f"({r['workers']} workers, {r['dataset']})", flush=True)
    table = format_table(rows)
    print(table)
    if args.write:
        from bench_common import replace_section

        host = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"
        body = (f"Measured on {host}; the 2 cores were shared with other jobs while it ran, so absolute seconds are "
                "noisy, ratios within a bundle less so. Synthetic files in the exact real layouts; batch "
                f"{BATCH['chexpert']} images (CheXpert) / {BATCH['brats']} volumes (BraTS); `disk` = the default for a "
                "real `dataset_dir` (lazy persistent cache, `min(8, CPUs)` workers), `memory` = the previous "
                "default (CacheDataset of everything, 0 workers). Ratios are against the smallest N of the same "
                "variant.\n\n" + table)
        replace_section("Data path at scale", body, script="data_scale.py")


def format_table(rows: list[dict]) -> str:
    lines = ["| bundle | N | cache | first batch (s) | ratio | of which: data list + dataset (s) | loader to batch (s) | "
             "peak RSS main (MB) | ratio | RSS with workers (MB) | ratio |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base: dict[tuple, dict] = {}
    for r in rows:
        key = (r["bundle"], r["cache"], r["state"])
        b = base.setdefault(key, r)
        lines.append(f"| {r['bundle']} | {r['n']:,} | {r['cache']} {r['state']} | {r['first_batch_s']:.1f} | "
                     f"{r['first_batch_s'] / b['first_batch_s']:.2f} | {r['build_s']:.1f} | {r['batch_s']:.1f} | "
                     f"{r['rss_main'] / 2**20:.0f} | {r['rss_main'] / b['rss_main']:.2f} | "
                     f"{r['rss_total'] / 2**20:.0f} | {r['rss_total'] / b['rss_total']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
