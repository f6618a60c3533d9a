"""Throughput and peak memory of the pretraining bundles' train.json, MFASSL vs the baseline, in one run.

Usage::

    python bench/bundle_throughput.py [--bundles brats,chexpert] [--size full|demo] [--steps 5] [--compile]
                                      [--compile-mode default] [--compile-backend inductor] [--write]

Each (bundle, variant) runs the bundle's own ``train.json`` workflow (data pipeline, trainer, TensorBoard
and progress handlers; ``--size demo`` adds its ``demo.json``) on the built-in demo data, in a fresh
subprocess so peak memory is per variant. The staged schedule is moved to the start (``t_sym = t_mfa =
t_gate = 0``) so every timed MFASSL step pays for the whole method: mirror branch, MFA, L_eq and L_mid.
The baseline is the same config with ``mirror: false``. Throughput is images (2D) or volumes (3D) per
second of wall time between consecutive iterations, after ``--warmup`` iterations; data loading is part
of it, as it is for a user. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, peak process RSS
on the CPU.

``--compile`` sets the bundles' ``compile`` key (``--compile true`` on the bundle's command line:
``mfassl.engine.create_trainer`` runs the step's forward through ``torch.compile``) with ``compile_mode`` and
``compile_backend``; ``--warmup`` is then at least 1, so the timing never includes the first two iterations
(the first compiles, the second recompiles once the fractional epoch leaves 0), and the table goes to its own
RESULTS.md section.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import device_name, replace_section, section_title  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = {"brats": "mfassl_brats_pretrain", "chexpert": "mfassl_chexpert_pretrain"}


def _measure(queue, bundle: str, size: str, mirror: bool, args: dict) -> None:
    """Run one variant of one bundle in this (child) process and put its numbers on ``queue``."""
    import logging

    from ignite.engine import Events
    from monai.bundle import ConfigParser

    from mfassl.engine import step_record

    logging.disable(logging.WARNING)
    torch.set_num_threads(args["threads"])
    bdir = ROOT / "bundles" / BUNDLES[bundle]
    files = [str(bdir / "configs" / "train.json")]
    if size == "demo":
        files.append(str(bdir / "configs" / "demo.json"))
    def make_parser(batch: int | None) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(files)
        overrides = {
            "bundle_root": str(bdir), "output_dir": tmp, "mirror": mirror, "progress": False,
            "device": f"$torch.device('{args['device']}')", "amp": args["device"].startswith("cuda"),
            "t_sym": 0.0, "t_mfa": 0.0, "t_gate": 0.0, "warmup_epochs": 0.0, "checkpoint_every": 1000,
            "objective": args["objective"],
            "compile": args["compile"], "compile_mode": args["compile_mode"],
            "compile_backend": args["compile_backend"],
        }
        if batch:
            overrides["batch_size"] = batch
        parser.update(overrides)
        return parser

    with tempfile.TemporaryDirectory() as tmp:
        parser = make_parser(args["batch"])
        n_items = len(parser.get_parsed_content("train#datalist"))
        if int(parser.get_parsed_content("batch_size")) > n_items:  # the demo set is smaller than the batch
            parser = make_parser(2 ** int(math.log2(n_items)))
        parser.parse()
        for i in range(len(parser.get("initialize", []))):
            parser.get_parsed_content(f"initialize#{i}")
        loader = parser.get_parsed_content("train#dataloader")
        trainer = parser.get_parsed_content("train#trainer")
        batch = int(parser.get_parsed_content("batch_size"))
        dev = torch.device(args["device"])
        stamps: list[float] = []

        @trainer.on(Events.ITERATION_COMPLETED)
        def _stamp(engine) -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        n = args["warmup"] + args["steps"] + 1
        trainer.run(loader, max_epochs=1, epoch_length=n)
        steps = [b - a for a, b in zip(stamps[args["warmup"]:], stamps[args["warmup"] + 1:])]
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        params = sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())
        spatial = parser.get_parsed_content("roi_size") if bundle == "brats" else parser.get_parsed_content("global_size")
        queue.put({"step_s": statistics.median(steps), "images_per_s": batch / statistics.median(steps),
                   "peak_mib": peak, "batch": batch, "params": params, "spatial": list(spatial),
                   "loss": step_record(trainer.state.output).get("loss")})


def measure(bundle: str, size: str, mirror: bool, args: argparse.Namespace) -> dict:
    """Run :func:`_measure` in a spawned process (peak memory per variant)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(q, bundle, size, mirror, dict(
        device=args.device, threads=args.threads, steps=args.steps, batch=args.batch, objective=args.objective,
        warmup=max(args.warmup, 1) if args.compile else args.warmup, compile=args.compile,
        compile_mode=args.compile_mode, compile_backend=args.compile_backend)))
    p.start()
    result = q.get()
    p.join()
    if p.exitcode:
        raise RuntimeError(f"{bundle} (mirror={mirror}) failed with exit code {p.exitcode}")
    return result


def render(rows: list[dict], args: argparse.Namespace) -> str:
    """The markdown table and its note."""
    lines = ["| bundle | network | input | batch | baseline img/s | MFASSL img/s | throughput ratio | "
             "baseline peak MiB | MFASSL peak MiB | memory ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, m = r["baseline"], r["mfassl"]
        dims = "x".join(str(s) for s in m["spatial"])
        lines.append(
            f"| {r['bundle']} ({r['size']}) | {r['network']} | {dims} | {m['batch']} | {b['images_per_s']:.2f} | "
            f"{m['images_per_s']:.2f} | {m['images_per_s'] / b['images_per_s']:.2f} | {b['peak_mib']:.0f} | "
            f"{m['peak_mib']:.0f} | {m['peak_mib'] / b['peak_mib']:.2f} |")
    dev = torch.device(args.device)
    mem = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process peak RSS"
    warmup = max(args.warmup, 1) if args.compile else args.warmup
    compiled = (f"torch.compile of the step's forward (bundle key `compile: true`, mode {args.compile_mode}, "
                f"backend {args.compile_backend}); " if args.compile else "")
    note = (f"Device: {device_name(dev)}; objective {args.objective}; {compiled}median of {args.steps} iterations "
            f"after {warmup} warm-up iterations; memory is {mem}; AMP {'on' if dev.type == 'cuda' else 'off'}. "
            f"MFASSL has the whole method on from the first step (t_sym = t_mfa = t_gate = 0); baseline is "
            f"`mirror: false`. Throughput includes the bundle's data loading from its cache. "
            f"torch {torch.__version__}, Python {platform.python_version()}.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", default="brats,chexpert")
    parser.add_argument("--size", default="full", help="comma list of full (train.json) and demo (+demo.json)")
    parser.add_argument("--objective", default="dino")
    parser.add_argument("--batch", type=int, default=None, help="override the bundle's batch size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="the bundles' compile key: torch.compile the step")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (with --compile)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (with --compile)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    rows = []
    for size in args.size.split(","):
        for name in args.bundles.split(","):
            row = {"bundle": BUNDLES[name], "size": size}
            for key, mirror in (("baseline", False), ("mfassl", True)):
                row[key] = measure(name, size, mirror, args)
                print(f"{name} {size} {key}: {row[key]}", flush=True)
            row["network"] = f"{'3D' if name == 'brats' else '2D'} MFA-ViT, {row['mfassl']['params'] / 1e6:.1f} M"
            rows.append(row)
    table = render(rows, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.write:
        title = "Bundle throughput" + (" with torch.compile" if args.compile else "")
        replace_section(section_title(title, args.device), table, script="bundle_throughput.py")


if __name__ == "__main__":
    main()
