"""Step time and peak memory of one MFASSL step vs one baseline step on the same batch.

Usage::

    python bench/step_time.py [--models tiny,small] [--objective dino] [--batch 4] [--repeats 3] [--write]

For each model both variants run in a fresh subprocess (so peak memory is per variant) on the same
seeded batch. The predicted ratio is the ratio of the FLOPs of the two whole steps (forward and
backward, counted by ``torch.utils.flop_counter.FlopCounterMode``): the mirror branch should cost its
encoder passes and nothing more, so the measured time ratio should sit within 10% of it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import device_name, replace_section, section_title  # noqa: E402

MODELS = {"tiny": "mfa_vit_tiny", "small": "mfa_vit_small", "base": "mfa_vit_base"}


def _measure(queue, model: str, objective: str, mirror: bool, batch: int, repeats: int, device: str, threads: int) -> None:
    import psutil
    from torch.utils.flop_counter import FlopCounterMode

    from mfassl.engine import create_optimizer
    from mfassl.method import MFASSL

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    method = MFASSL(MODELS[model], objective, mirror=mirror, t_sym=0.0, t_mfa=0.0, t_gate=0.0,
                    backbone_kwargs=dict(in_chans=1)).to(dev)
    opt = create_optimizer(method)
    images = torch.rand(batch, 1, 256, 256, generator=torch.Generator().manual_seed(1)).to(dev)

    def step() -> None:
        torch.manual_seed(2)
        out = method(images, epoch=1.0)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.update_teacher(0.996)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    rss0 = psutil.Process().memory_info().rss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**20
        peak += rss0 / 2**20
    queue.put((statistics.median(times), peak, flops))


def measure(model: str, objective: str, mirror: bool, args) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(q, model, objective, mirror, args.batch, args.repeats, args.device, args.threads))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,small")
    parser.add_argument("--objective", default="dino")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    lines = ["| model | objective | baseline step (s) | MFASSL step (s) | measured ratio | FLOP ratio | "
             "measured / FLOP | baseline peak MiB | MFASSL peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model in args.models.split(","):
        tb, mb, fb = measure(model, args.objective, False, args)
        tm, mm, fm = measure(model, args.objective, True, args)
        ratio, pred = tm / tb, fm / fb
        lines.append(f"| ViT-{model} | {args.objective} | {tb:.3f} | {tm:.3f} | {ratio:.2f} | {pred:.2f} | "
                     f"{ratio / pred:.2f} | {mb:.0f} | {mm:.0f} |")
        print(lines[-1], flush=True)
    mem_kind = "CUDA max allocated" if args.device == "cuda" else "process peak RSS"
    note = (f"Device: {device_name(torch.device(args.device))}, {args.threads} threads; batch {args.batch} images of "
            f"1x256x256, published views (2 x 224 + 8 x 96 for DINO), mirror pairs at 224; median of {args.repeats} "
            f"steps after one; memory is {mem_kind}. torch {torch.__version__}, Python {platform.python_version()}.")
    table = "\n".join(lines)
    print(table)
    print(note)
    if args.write:
        replace_section(section_title("Step time", args.device), f"{table}\n\n{note}\n", script="step_time.py")


if __name__ == "__main__":
    main()
