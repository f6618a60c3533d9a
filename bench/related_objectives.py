"""Related objectives: DAGMaN vs MAE on Swin and MixedAE vs MAE on ViT, cost and attention statistics.

Usage::

    python bench/related_objectives.py [--batch 8] [--size 64] [--repeats 3] [--steps 30] [--write]

Part 1 (cost): each variant and its MAE baseline run on the same seeded batch: one warm-up step each,
then ``repeats`` rounds of one timed optimiser step of each, interleaved (forward, backward, AdamW step
and, for DAGMaN, the teacher EMA); the fastest step is reported (the CPU is shared, so slower repeats
measure the neighbours). Peak memory is measured in a fresh subprocess per variant (two steps): the
peak RSS of the process above its RSS after the model was built (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA). Ratios compare against MAE on the same backbone and batch
(MAE with the same share of hidden patches: 0.6 on Swin as DAGMaN's default; ``1 - r`` on ViT).

Part 2 (statistics): a short pretraining on the chest images of the synthetic demo data
(:func:`mfassl_medical.demo_data.build_demo_data`, resized to ``size``; random smooth images when the
demo data cannot be built, which the output says) and the attention statistics before and after:
DAGMaN's teacher attention entropy per stage (mean over heads; noisy teacher vs ``noise_std=0``) and
mask overlap, MixedAE's TopK sampling accuracy per layer.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import device_name, replace_section, section_title  # noqa: E402

logger = logging.getLogger("bench.related_objectives")

SWIN = dict(in_chans=1, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=4, mfa_stage=2)
VIT = dict(in_chans=1, patch_size=8, embed_dim=192, depth=6, num_heads=3)
DEC = dict(decoder_dim=96, decoder_depth=1, decoder_heads=4)

# (row label, backbone kind, spatial dims, objective, objective kwargs)
VARIANTS = [
    ("Swin 2D: MAE (SimMIM, 0.6)", "swin", 2, "mae", dict(mask_ratio=0.6)),
    ("Swin 2D: DAGMaN (0.6, noise 0.1)", "swin", 2, "dagman", dict(mask_ratio=0.6, noise_std=0.1)),
    ("Swin 3D: MAE (SimMIM, 0.6)", "swin", 3, "mae", dict(mask_ratio=0.6)),
    ("Swin 3D: DAGMaN (0.6, noise 0.1)", "swin", 3, "dagman", dict(mask_ratio=0.6, noise_std=0.1)),
    ("ViT 2D: MAE (0.5)", "vit", 2, "mae", dict(mask_ratio=0.5, **DEC)),
    ("ViT 2D: MixedAE (r 0.5)", "vit", 2, "mixedae", dict(mixing_ratio=0.5, proj_dim=64, **DEC)),
    ("ViT 2D: MAE (0.75)", "vit", 2, "mae", dict(mask_ratio=0.75, **DEC)),
    ("ViT 2D: MixedAE (r 0.25)", "vit", 2, "mixedae", dict(mixing_ratio=0.25, proj_dim=64, **DEC)),
]


def build(kind: str, dims: int, objective: str, kwargs: dict[str, Any], size: int):
    """The objective on a fresh backbone (seeded)."""
    from mfassl.backbones import MFASwin, MFAViT
    from mfassl.objectives import create_objective

    torch.manual_seed(0)
    net = MFASwin(dims, **SWIN) if kind == "swin" else MFAViT(dims, img_size=size, **VIT)
    return create_objective(objective, net, **kwargs)


def train_step(obj, opt, x: torch.Tensor) -> float:
    out = obj([x])
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    if obj.momentum is not None:
        obj.update_teacher(0.99)
    return float(out["loss"].detach())


def _setup(variant: tuple, batch: int, size: int, device: torch.device):
    label, kind, dims, objective, kwargs = variant
    if dims == 3:  # keep 3D volumes small: batch / 4 volumes of (size / 2)^3
        batch, size = max(2, batch // 4), size // 2
    obj = build(kind, dims, objective, kwargs, size).to(device)
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 1, *([size] * dims), generator=torch.Generator().manual_seed(1)).to(device)
    return obj, opt, x


def _peak_memory(queue, variant: tuple, batch: int, size: int, device: str, threads: int) -> None:
    """Peak memory of two steps of ``variant`` in this (fresh) process."""
    import psutil

    torch.set_num_threads(threads)
    dev = torch.device(device)
    obj, opt, x = _setup(variant, batch, size, dev)
    base_rss = psutil.Process().memory_info().rss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(2):
        train_step(obj, opt, x)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    queue.put(peak)


def _timed(obj, opt, x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    train_step(obj, opt, x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def measure_costs(batch: int, size: int, repeats: int, device: str) -> list[dict[str, Any]]:
    """Per variant: fastest step (baseline and variant interleaved, so both see the same CPU load) and peak memory."""
    ctx = mp.get_context("spawn")
    dev = torch.device(device)
    rows = []
    for base_v, other_v in zip(VARIANTS[::2], VARIANTS[1::2]):
        setups = [_setup(v, batch, size, dev) for v in (base_v, other_v)]
        for s in setups:
            train_step(*s)  # warm-up
        times: list[list[float]] = [[], []]
        for _ in range(repeats):
            for i, s in enumerate(setups):
                times[i].append(_timed(*s))
        for v, s, t in zip((base_v, other_v), setups, times):
            queue = ctx.Queue()
            proc = ctx.Process(target=_peak_memory, args=(queue, v, batch, size, device, torch.get_num_threads()))
            proc.start()
            peak = queue.get()
            proc.join()
            x = s[2]
            rows.append(dict(label=v[0], time=min(t), peak=peak, batch=x.shape[0], size=x.shape[-1], dims=v[2]))
            print(f"  measured {v[0]}: {min(t):.3f} s (all: {', '.join(f'{y:.2f}' for y in t)})", flush=True)
    return rows


# ---------------------------------------------------------------------------- data
def load_images(size: int, n: int = 48) -> tuple[torch.Tensor, str]:
    """``(n, 1, size, size)`` chest images of the demo data in [0, 1], or smooth random images."""
    try:
        import numpy as np
        from PIL import Image

        from mfassl_medical.demo_data import build_demo_data, default_demo_root

        paths = build_demo_data(root=default_demo_root().parent / "demo-bench-related", n_brats=0, n_chexpert=n)
        files = sorted(paths.chexpert.rglob("*.png"))[:n]
        imgs = [torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0) for f in files]
        x = torch.stack([F.interpolate(i[None, None], size=(size, size), mode="area")[0] for i in imgs])
        return x, f"demo chest images ({len(files)}, synthetic from one real radiograph, {size} px)"
    except Exception as err:  # the demo data needs nilearn / pydicom-data; say so and go on
        logger.warning("demo data unavailable (%s); using smooth random images", err)
        g = torch.Generator().manual_seed(0)
        x = F.interpolate(torch.rand(n, 1, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic")
        return x.clamp(0, 1), f"smooth random images ({n}, {size} px; demo data unavailable: {err})"


def pretrain_stats(images: torch.Tensor, steps: int, batch: int) -> dict[str, Any]:
    """Attention statistics before/after ``steps`` steps of DAGMaN (two noise scales) and MixedAE."""
    size = images.shape[-1]
    g = torch.Generator().manual_seed(0)
    batches = [images[torch.randint(0, images.shape[0], (batch,), generator=g)] for _ in range(steps)]
    probe = images[:batch]
    out: dict[str, Any] = {}
    for name, kind, objective, kwargs in [
        ("DAGMaN noise 0.1", "swin", "dagman", dict(noise_std=0.1)),
        ("DAGMaN noise 0", "swin", "dagman", dict(noise_std=0.0)),
        ("DAGMaN random masks", "swin", "dagman", dict(noise_std=0.1, guided=False)),
        ("MixedAE r 0.5", "vit", "mixedae", dict(mixing_ratio=0.5, proj_dim=64, **DEC)),
    ]:
        obj = build(kind, 2, objective, kwargs, size)
        opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=5e-4)
        torch.manual_seed(0)
        with torch.no_grad():
            obj([probe])
        before = obj.extra_state()
        t0 = time.perf_counter()
        losses = [train_step(obj, opt, x) for x in batches]
        with torch.no_grad():
            obj([probe])
        out[name] = dict(before=before, after=obj.extra_state(), loss0=losses[0], loss1=losses[-1],
                         seconds=time.perf_counter() - t0)
        print(f"  pretrained {name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    return out


def _stage_entropy(state: dict[str, float], stage: int) -> float:
    vals = [v for k, v in state.items() if k.startswith(f"dagman/entropy_s{stage}_")]
    return sum(vals) / len(vals)


def render(rows: list[dict[str, Any]], stats: dict[str, Any], data: str, args, device: torch.device) -> str:
    lines = ["| variant | input | step (s) | ratio | peak memory (MiB) | ratio |", "|---|---|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        base = rows[i - i % 2]
        shape = f"{r['batch']} x {'x'.join([str(r['size'])] * r['dims'])}"
        lines.append(f"| {r['label']} | {shape} | {r['time']:.3f} | {r['time'] / base['time']:.2f} | "
                     f"{r['peak'] / 2**20:.0f} | {r['peak'] / max(base['peak'], 1):.2f} |")
    lines += ["", f"Attention statistics after {args.steps} steps (batch {args.batch}) on {data}; "
              "before -> after, on a fixed probe batch:", ""]
    lines += ["| run | loss | entropy s1 | s2 | s3 | s4 | mask overlap |", "|---|---|---|---|---|---|---|"]
    for name, s in stats.items():
        if not name.startswith("DAGMaN"):
            continue
        ents = " | ".join(f"{_stage_entropy(s['before'], k):.3f} -> {_stage_entropy(s['after'], k):.3f}"
                          for k in range(1, 5))
        lines.append(f"| {name} | {s['loss0']:.3f} -> {s['loss1']:.3f} | {ents} | "
                     f"{s['before']['dagman/mask_overlap']:.2f} -> {s['after']['dagman/mask_overlap']:.2f} |")
    lines += ["", "| run | loss | " + " | ".join(f"TopK acc. layer {k.rsplit('_l', 1)[1]}"
                                                  for k in stats["MixedAE r 0.5"]["after"]) + " |"]
    s = stats["MixedAE r 0.5"]
    lines.append("|---|---|" + "---|" * len(s["after"]))
    lines.append(f"| MixedAE r 0.5 | {s['loss0']:.3f} -> {s['loss1']:.3f} | "
                 + " | ".join(f"{s['before'][k]:.3f} -> {s['after'][k]:.3f}" for k in s["after"]) + " |")
    lines += ["", f"Device: {device_name(device)}; Swin embed 24, depths 2-2-2-2, window 4; ViT embed 192, depth 6, "
              f"patch 8; 2D batch {args.batch} at {args.size} px, 3D batch {max(2, args.batch // 4)} at "
              f"{args.size // 2}^3; fastest of {args.repeats} interleaved steps after one warm-up (shared CPU), "
              f"memory in a fresh process per variant; torch {torch.__version__}, Python {platform.python_version()}. "
              "Entropy in nats "
              "(uniform over a 4x4 window = 2.77, over 2x2 = 1.39). TopK chance level = r = 0.5."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write", action="store_true", help="replace the section in bench/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    print("cost:", flush=True)
    rows = measure_costs(args.batch, args.size, args.repeats, args.device)
    print("pretraining:", flush=True)
    images, data = load_images(args.size)
    stats = pretrain_stats(images, args.steps, args.batch)
    table = render(rows, stats, data, args, device)
    print(table)
    if args.write:
        replace_section(section_title("Related objectives", args.device), table, script="related_objectives.py")


if __name__ == "__main__":
    main()
