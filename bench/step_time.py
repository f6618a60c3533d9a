"""Step time and peak memory of one MFASSL step vs one baseline step on the same batch.

Usage::

    python bench/step_time.py [--models tiny,small] [--objective dino] [--batch 4] [--repeats 3] [--warmup 1]
                              [--compile] [--compile-mode default] [--compile-backend inductor] [--write]

For each model both variants run in a fresh subprocess (so peak memory is per variant) on the same
seeded batch. The step is ``bench_common.build_mfassl_step`` (the one ``bench/peer_step.py`` times too):
forward (views, objective, mirror branch), backward, AdamW, the teacher's EMA. The predicted ratio is the
ratio of the FLOPs of the two whole steps (forward and backward, counted by
``torch.utils.flop_counter.FlopCounterMode`` on an eager step): the mirror branch should cost its encoder
passes and nothing more, so the measured time ratio should sit within 10% of it.

``--compile`` also times each variant with its forward compiled by ``torch.compile`` (``mfassl.engine.
compile_forward``, the trainer's ``compile`` option) in its own subprocess: the compiled steps are timed after
``--warmup`` steps (at least one; the first compiles, its time is reported), and a second table gives the
eager and compiled step times, the speed-up and the memory of both.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import queue
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import VIT_MODELS, build_mfassl_step, device_name, replace_section, section_title  # noqa: E402

MODELS = VIT_MODELS  # the sizes --models names


def _measure(queue, model: str, objective: str, mirror: bool, args: dict) -> None:
    """Time one variant in this (child) process; puts ``(median s, peak MiB, FLOPs, first step s)`` on ``queue``."""
    import psutil
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    dev = torch.device(args["device"])
    train_step = build_mfassl_step(model, objective, mirror, dev, compile=args["compile"],
                                   compile_mode=args["compile_mode"], compile_backend=args["compile_backend"])
    images = torch.rand(args["batch"], 1, 256, 256, generator=torch.Generator().manual_seed(1)).to(dev)

    def step(eager: bool = False) -> float:
        torch.manual_seed(2)  # the same views in every step and both variants
        t0 = time.perf_counter()
        train_step(images, eager=eager)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with FlopCounterMode(display=False) as counter:
        step(eager=True)  # FLOPs of the eager step (the same work as the compiled one); also a warm-up
    flops = counter.get_total_flops()
    warm = [step() for _ in range(args["warmup"] if args["compile"] else args["warmup"] - 1)]
    first = warm[0] if warm else 0.0
    rss0 = psutil.Process().memory_info().rss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(args["repeats"])]
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**20
        peak += rss0 / 2**20
    queue.put((statistics.median(times), peak, flops, first))


def measure(model: str, objective: str, mirror: bool, args, compile: bool = False) -> tuple[float, float, float, float]:
    """:func:`_measure` in a spawned process: ``(median step s, peak MiB, FLOPs, first compiled step s)``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    opts = dict(batch=args.batch, repeats=args.repeats, warmup=max(args.warmup, 1), device=args.device,
                threads=args.threads, compile=compile, compile_mode=args.compile_mode,
                compile_backend=args.compile_backend)
    p = ctx.Process(target=_measure, args=(q, model, objective, mirror, opts))
    p.start()
    while True:
        try:
            result = q.get(timeout=5.0)
            break
        except queue.Empty:  # the worker may have died: say so instead of waiting for ever
            if not p.is_alive():
                raise RuntimeError(f"step_time worker ({model}, mirror={mirror}, compile={compile}) exited with "
                                   f"code {p.exitcode}") from None
    p.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,small", help="comma-separated: tiny, small, base")
    parser.add_argument("--objective", default="dino")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps (the FLOP-counting step counts as one eager; compiled: at least one)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time each variant with torch.compile")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (with --compile)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (with --compile)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    lines = ["| model | objective | baseline step (s) | MFASSL step (s) | measured ratio | FLOP ratio | "
             "measured / FLOP | baseline peak MiB | MFASSL peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    clines = ["| model | objective | variant | eager step (s) | compiled step (s) | speed-up | "
              "first compiled step (s) | eager peak MiB | compiled peak MiB |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for model in args.models.split(","):
        tb, mb, fb, _ = measure(model, args.objective, False, args)
        tm, mm, fm, _ = measure(model, args.objective, True, args)
        ratio, pred = tm / tb, fm / fb
        lines.append(f"| ViT-{model} | {args.objective} | {tb:.3f} | {tm:.3f} | {ratio:.2f} | {pred:.2f} | "
                     f"{ratio / pred:.2f} | {mb:.0f} | {mm:.0f} |")
        print(lines[-1], flush=True)
        if args.compile:
            for variant, mirror, (t_eager, m_eager) in (("baseline", False, (tb, mb)), ("MFASSL", True, (tm, mm))):
                tc, mc, _, first = measure(model, args.objective, mirror, args, compile=True)
                clines.append(f"| ViT-{model} | {args.objective} | {variant} | {t_eager:.3f} | {tc:.3f} | "
                              f"{t_eager / tc:.2f} | {first:.1f} | {m_eager:.0f} | {mc:.0f} |")
                print(clines[-1], flush=True)
    mem_kind = "CUDA max allocated" if args.device == "cuda" else "process peak RSS"
    warm = max(args.warmup, 1)
    note = (f"Device: {device_name(torch.device(args.device))}, {args.threads} threads; batch {args.batch} images of "
            f"1x256x256, published views (2 x 224 + 8 x 96 for DINO), mirror pairs at 224; median of {args.repeats} "
            f"steps after {warm}; memory is {mem_kind}. torch {torch.__version__}, Python {platform.python_version()}.")
    table = "\n".join(lines)
    print(table)
    print(note)
    cnote = ""
    if args.compile:
        cnote = (f"torch.compile of the step's forward (mode {args.compile_mode}, backend {args.compile_backend}; "
                 f"backward, AdamW and the teacher's EMA eager), each variant in its own process; compiled steps "
                 f"timed after {warm} warm-up step(s), the first of which compiles (its wall time is the 'first "
                 f"compiled step'). Eager columns from the table above. {note}")
        print("\n".join(clines))
        print(cnote)
    if args.write:
        replace_section(section_title("Step time", args.device), f"{table}\n\n{note}\n", script="step_time.py")
        if args.compile:
            replace_section(section_title("Step time with torch.compile", args.device),
                            "\n".join(clines) + f"\n\n{cnote}\n", script="step_time.py")


if __name__ == "__main__":
    main()
