"""Does the data path keep up with training? Images (volumes) per second the bundles' data path delivers with
0, 1 and 2 DataLoader workers on a warm disk cache, against the images per second one training step consumes.

Usage::

    python bench/data_throughput.py [--bundles chexpert,brats] [--images 192] [--cases 16] [--write]

The data sets are the synthetic real-layout files of ``bench/data_scale.py``. The bundle's ``train.json`` is
parsed with ``dataset_dir`` set (``cache`` auto = disk); one pass fills the cache, then each worker count
reads a full epoch (batches of 16 images / 2 volumes): the rate counts every image after the first batch (steady state) and, separately, the whole epoch including
worker start-up. The step cost is one MFASSL step of the bundle's ``method`` and ``optimizer`` (forward,
backward, AdamW step; the schedule at epoch 15, so the mirror branch, MFA and both symmetry losses run) on
random images of the cached size, for the published config and for the tiny test config, on this machine's
CPU. When the data path delivers more images per second than a step consumes, the accelerator does not wait.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

from data_scale import BUNDLES, brats_pool, chexpert_pool, write_brats, write_chexpert  # noqa: E402

LOADER_BATCH = {"chexpert": 16, "brats": 2}
STEP_BATCH = {"chexpert": 4, "brats": 1}
TINY = {
    "chexpert": {"network_def#img_size": 32, "network_def#embed_dim": 48, "network_def#depth": 2,
                 "network_def#num_heads": 4, "network_def#mfa_layer": 1, "image_size": [48, 48],
                 "global_size": [32, 32], "local_size": [16, 16], "n_local": 1,
                 "objective_args#dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32}},
    "brats": {"network_def#embed_dim": 48, "network_def#depth": 2, "network_def#num_heads": 4,
              "network_def#mfa_layer": 1, "roi_size": [32, 32, 32], "local_size": [16, 16, 16], "n_local": 1,
              "objective_args#dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32}},
}


def _parser(bundle: str, overrides: dict):
    from monai.bundle import ConfigParser

    root = ROOT / "bundles" / BUNDLES[bundle]
    p = ConfigParser()
    p.read_config(str(root / "configs" / "train.json"))
    p.update({"bundle_root": str(root), "progress": False, **overrides})
    return p


def loader_rate(bundle: str, data: Path, out: Path, workers: int, batch: int) -> dict:
    """Read one epoch through the bundle's DataLoader; images/s after the first batch and overall."""
    p = _parser(bundle, {"dataset_dir": str(data), "output_dir": str(out), "num_workers": workers,
                         "batch_size": batch})
    loader = p.get_parsed_content("train#dataloader")
    t0 = time.perf_counter()
    n, t_first = 0, None
    for b in loader:
        if t_first is None:
            t_first, n_first = time.perf_counter(), int(b["image"].shape[0])
        n += int(b["image"].shape[0])
    t1 = time.perf_counter()
    steady = (n - n_first) / max(1e-9, t1 - t_first) if n > n_first else float("nan")
    return {"workers": workers, "images": n, "steady": steady, "overall": n / (t1 - t0),
            "computed": loader.dataset.dataset.computed, "bad": loader.dataset.summary()["bad_samples"]}


def step_rate(bundle: str, overrides: dict, batch: int, steps: int = 1) -> dict:
    """Images/s of one MFASSL training step (forward, backward, optimizer) of the bundle's method on the CPU."""
    import torch

    p = _parser(bundle, overrides)
    method, opt = p.get_parsed_content("method"), p.get_parsed_content("optimizer")
    size = p.get_parsed_content("image_size" if bundle == "chexpert" else "roi_size")
    chans = p.get_parsed_content("in_channels")
    x = torch.rand(batch, chans, *size, generator=torch.Generator().manual_seed(0))
    method.train()
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        losses = method(x, None, epoch=15.0)
        losses["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    return {"batch": batch, "step_s": s, "images_per_s": batch / s,
            "params_m": sum(q.numel() for q in method.parameters()) / 1e6}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="chexpert,brats")
    ap.add_argument("--images", type=int, default=192, help="CheXpert images")
    ap.add_argument("--cases", type=int, default=16, help="BraTS cases")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--root", default=None)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="mfassl_tput_"))
    rows, steps = [], []
    for b in args.bundles.split(","):
        n = args.images if b == "chexpert" else args.cases
        pool = chexpert_pool(root / "pool_cxr", 16) if b == "chexpert" else brats_pool(root / "pool_brats", 3)
        data = write_chexpert(root / f"{b}_{n}", n, pool) if b == "chexpert" else write_brats(root / f"{b}_{n}", n, pool)
        out = root / f"runs_{b}" / "pretrain"
        batch = LOADER_BATCH[b]
        t = time.perf_counter()
        warm = loader_rate(b, data, out, min(2, os.cpu_count() or 1), batch)  # fills the cache
        print(f"[{b}] cache filled ({warm['images']} items) in {time.perf_counter() - t:.1f} s", flush=True)
        for w in [int(v) for v in args.workers.split(",")]:
            r = loader_rate(b, data, out, w, batch)
            r.update(bundle=b, batch=batch)
            rows.append(r)
            print(f"[{b}] {w} workers: {r['steady']:.1f} images/s steady, {r['overall']:.1f} overall", flush=True)
        for name, ov in (("published", {}), ("tiny", TINY[b])):
            s = step_rate(b, ov, STEP_BATCH[b] if name == "published" else 8)
            s.update(bundle=b, config=name)
            steps.append(s)
            print(f"[{b}] {name} step: batch {s['batch']}, {s['step_s']:.2f} s, {s['images_per_s']:.2f} images/s "
                  f"({s['params_m']:.1f} M parameters)", flush=True)
    table = format_tables(rows, steps)
    print(table)
    if args.write:
        from bench_common import replace_section

        host = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"
        body = (f"Measured on {host}, 2 intra-op threads; the 2 cores were shared with other jobs while it ran, "
                "and the DataLoader workers compete with the main process for them, so this machine cannot "
                "show how the rate grows with more workers. Warm disk cache, synthetic real-layout files "
                "(`bench/data_scale.py`); images (CheXpert, 256x256 after preprocessing) or volumes (BraTS, 4x96^3) per second.\n\n" + table)
        replace_section("Data path throughput", body, script="data_throughput.py")


def format_tables(rows: list[dict], steps: list[dict]) -> str:
    lines = ["| bundle | workers | batch | delivered, steady (img/s) | delivered, epoch incl. start-up (img/s) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['bundle']} | {r['workers']} | {r['batch']} | {r['steady']:.1f} | {r['overall']:.1f} |")
    lines += ["", "| bundle | step config | batch | step (s) | consumed (img/s) | parameters (M) |",
              "|---|---|---:|---:|---:|---:|"]
    for s in steps:
        lines.append(f"| {s['bundle']} | {s['config']} | {s['batch']} | {s['step_s']:.2f} | "
                     f"{s['images_per_s']:.2f} | {s['params_m']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
