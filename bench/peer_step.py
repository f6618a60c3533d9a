"""Training step against a peer: our step vs lightly's on the same work, and MFASSL vs its baseline.

Usage::

    python bench/peer_step.py [--models tiny,small] [--objectives dino,mocov3] [--batch 4] [--rounds 5]
                              [--steps 1] [--device cpu] [--compile] [--compile-mode default]
                              [--compile-backend inductor] [--write]

Every variant lives in its own worker process (spawned, one thread, ``torch.set_num_threads(1)``) so that
its peak memory is its own; the parent interleaves the variants in rounds (the order rotates from round
to round), each round timing ``--steps`` steps of each variant, and reports medians over the rounds of the
per-round ratios, which keeps a slow drift of the machine's load out of the ratios. Wall time and the
worker's process CPU time (``time.process_time``) are both reported; on a loaded machine the CPU time is
the steadier of the two. Memory is the step's peak: the worker's peak RSS (``ru_maxrss``) minus its RSS
once the model and optimizer are built, i.e. gradients, optimizer state and activations (CUDA: the peak
of ``torch.cuda.max_memory_allocated`` over the steps).

The variants, on the same seeded batch of ``B`` images of 1 x 256 x 256 and the same views
(:class:`mfassl.views.MultiCropViews`; DINO 2 x 224 + 8 x 96, MoCo-v3 2 x 224; same-shape views batched):

- ``ours``: ``MFASSL(..., mirror=False)``, the baseline, with ``create_optimizer`` and ``update_teacher``
  (``bench_common.build_mfassl_step``, the step ``bench/step_time.py`` times);
- ``mfassl``: ``MFASSL(...)`` with the mirror branch (symmetry losses and MFA on), the same builder;
- ``peer``: lightly 1.6 on the same timm ViT: DINO with ``DINOProjectionHead`` (2048/256/65536),
  ``DINOLoss`` and ``update_momentum``; MoCo-v3 with ``MoCoProjectionHead`` (3 layers, batch norm,
  4096/256) and a 2-layer predictor (lightly has no MoCo-v3 loss: the ``2 T * CE`` InfoNCE, a ``B x B``
  matrix, is written here); AdamW with the same two parameter groups (decay / no decay) and torch's default
  kernel, as the peer's examples write it;
- ``peer_fused``: the same peer step given the fused AdamW kernel that ``create_optimizer`` picks (the columns
  "ours / fused peer"), so that the rest of the step is compared on the same optimizer kernel too.

The FLOP-predicted ratio of MFASSL over its baseline is the ratio of the FLOPs of the whole steps
(forward, backward, optimizer), counted by ``torch.utils.flop_counter.FlopCounterMode``. lightly is an
optional extra (``pip install -e ".[bench]"``); without it the peer rows are skipped with a line saying so.

``--compile`` compiles every variant the way its user would: our forward through ``mfassl.engine.
compile_forward`` (the trainer's ``compile`` option), the peer's student, teacher and predictor modules
through ``torch.compile``, with the same mode and backend; each worker takes two extra untimed steps (the
compilation) before the rounds, and FLOPs are still counted on an eager step. The results go to their own
section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import build_mfassl_step, device_name, publish, section_title  # noqa: E402

# the peer's ViT sizes: those of bench_common.VIT_MODELS (mfassl.backbones' ViT-Ti/S/B/16 presets)
MODELS = {"tiny": dict(embed_dim=192, depth=12, num_heads=3), "small": dict(embed_dim=384, depth=12, num_heads=6),
          "base": dict(embed_dim=768, depth=12, num_heads=12)}
SECTION = "Training step against a peer"
COMPILE_WARMUP = 2  # untimed compiled steps before the rounds (the first compiles)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _adamw(model: torch.nn.Module, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with the decay / no-decay groups of ``mfassl.engine.create_optimizer``, as a peer user writes it
    (torch's default kernel), or with ``fused=True`` the fused kernel ``create_optimizer`` picks."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.04},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=5e-4, fused=fused or None)


def _build_ours(model: str, objective: str, mirror: bool, dev: torch.device, compile_opts: dict | None = None):
    """The shared MFASSL step (``bench_common.build_mfassl_step``): ``step(images, eager=False) -> loss``."""
    opts = compile_opts or {}
    return build_mfassl_step(model, objective, mirror, dev, compile=bool(opts), **opts)


def _build_peer_model(model: str, objective: str, dev: torch.device) -> torch.nn.Module:
    from lightly.models.modules import DINOProjectionHead
    from timm.models.vision_transformer import VisionTransformer

    backbone = VisionTransformer(img_size=224, patch_size=16, in_chans=1, num_classes=0, qkv_bias=True,
                                 dynamic_img_size=True, **MODELS[model])
    return torch.nn.Sequential(backbone, DINOProjectionHead(MODELS[model]["embed_dim"], 2048, 256, 65536)).to(dev)


def _build_peer(model: str, objective: str, dev: torch.device, compile_opts: dict | None = None,
                fused: bool = False):
    """lightly's step on the same ViT: ``step(images, eager=False) -> loss``; ``compile_opts`` (``compile_mode``,
    ``compile_backend``) compiles the student, teacher and predictor modules, ``eager=True`` bypasses them;
    ``fused`` gives it the fused AdamW kernel."""
    import torch.nn as nn
    import torch.nn.functional as F
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead, MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from timm.models.vision_transformer import VisionTransformer

    from mfassl.objectives.base import group_by_shape
    from mfassl.views import MultiCropViews

    backbone = VisionTransformer(img_size=224, patch_size=16, in_chans=1, num_classes=0, qkv_bias=True,
                                 dynamic_img_size=True, **MODELS[model])
    dim = MODELS[model]["embed_dim"]
    if objective == "dino":
        views = MultiCropViews(n_global=2, n_local=8)
        head = DINOProjectionHead(dim, 2048, 256, 65536)
        loss_fn = DINOLoss(65536, warmup_teacher_temp=0.04, teacher_temp=0.04).to(dev)
        momentum = 0.996
    else:
        views = MultiCropViews(n_global=2, n_local=0)
        head = MoCoProjectionHead(dim, 4096, 256, num_layers=3, batch_norm=True)
        predictor = MoCoProjectionHead(256, 4096, 256, num_layers=2, batch_norm=True).to(dev)
        momentum = 0.99
    student = nn.Sequential(backbone, head).to(dev)
    # a fresh copy loaded from the student: deepcopy refuses weight_norm's computed weight
    teacher = _build_peer_model(model, objective, dev) if objective == "dino" else copy.deepcopy(student)
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    opt = _adamw(student if objective == "dino" else nn.ModuleList([student, predictor]), fused=fused)
    eager_modules = {"student": student, "teacher": teacher, "predictor": predictor if objective != "dino" else None}
    compiled_modules = dict(eager_modules)
    if compile_opts:
        compiled_modules = {k: None if m is None else torch.compile(m, mode=compile_opts["compile_mode"],
                                                                    backend=compile_opts["compile_backend"])
                            for k, m in eager_modules.items()}

    def infonce(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / 0.2
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device)) * 0.4

    def step(images: torch.Tensor, eager: bool = False) -> float:
        mods = eager_modules if eager else compiled_modules
        student, teacher, predictor = mods["student"], mods["teacher"], mods["predictor"]
        vs = views(images)
        if objective == "dino":
            t_out, s_out = [None] * 2, [None] * len(vs)
            with torch.no_grad():
                for idx, batch in group_by_shape(vs[:2]):
                    for i, t in zip(idx, teacher(batch).chunk(len(idx))):
                        t_out[i] = t
            for idx, batch in group_by_shape(vs):
                for i, s in zip(idx, student(batch).chunk(len(idx))):
                    s_out[i] = s
            loss = loss_fn(t_out, s_out)
        else:
            q1, q2 = predictor(student(torch.cat(vs))).chunk(2)
            with torch.no_grad():
                k1, k2 = teacher(torch.cat(vs)).chunk(2)
            loss = infonce(q1, k2) + infonce(q2, k1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_momentum(eager_modules["student"], eager_modules["teacher"], momentum)
        return float(loss.detach())

    return step


def _worker(conn, variant: str, model: str, objective: str, batch: int, device: str,
            compile_opts: dict | None = None) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    dev = torch.device(device)
    torch.manual_seed(0)
    step = (_build_peer(model, objective, dev, compile_opts, fused=variant == "peer_fused")
            if variant.startswith("peer") else _build_ours(model, objective, variant == "mfassl", dev, compile_opts))
    images = torch.rand(batch, 1, 256, 256, generator=torch.Generator().manual_seed(1)).to(dev)

    def run(eager: bool = False) -> float:
        torch.manual_seed(2)  # the same views in every variant and every step
        loss = step(images, eager=eager)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss

    rss0 = _rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    with FlopCounterMode(display=False) as counter:
        run(eager=True)  # compiled code reports no FLOPs; the eager step does the same work
    flops = counter.get_total_flops()
    for _ in range(COMPILE_WARMUP if compile_opts else 1):  # warm-up (and compilation)
        run()
    conn.send(("ready", flops))
    while True:
        cmd, n = conn.recv()
        if cmd == "stop":
            break
        walls, cpus = [], []
        for _ in range(n):
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        if dev.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
        else:
            peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**20
        conn.send((statistics.median(walls), statistics.median(cpus), peak))
    conn.close()


def _recv(worker) -> tuple:
    """The next message of a worker; raises when the worker died instead of waiting for ever."""
    proc, conn = worker
    while not conn.poll(1.0):
        if not proc.is_alive():
            raise RuntimeError(f"benchmark worker exited with code {proc.exitcode}")
    return conn.recv()


def compare(model: str, objective: str, variants: list[str], args) -> dict[str, dict[str, float]]:
    """Interleaved rounds of ``variants``; per variant the median wall / CPU seconds, peak MiB, FLOPs and
    per-round ratios to the first variant."""
    ctx = mp.get_context("spawn")
    workers = {}
    for v in variants:
        parent, child = ctx.Pipe()
        compile_opts = (dict(compile_mode=args.compile_mode, compile_backend=args.compile_backend)
                        if args.compile else None)
        p = ctx.Process(target=_worker, args=(child, v, model, objective, args.batch, args.device, compile_opts))
        p.start()
        workers[v] = (p, parent)
    res = {v: {"wall": [], "cpu": [], "peak": 0.0} for v in variants}
    for v, (_, conn) in workers.items():
        res[v]["flops"] = float(_recv(workers[v])[1])
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            conn = workers[v][1]
            conn.send(("run", args.steps))
            wall, cpu, peak = _recv(workers[v])
            res[v]["wall"].append(wall)
            res[v]["cpu"].append(cpu)
            res[v]["peak"] = max(res[v]["peak"], peak)
    for p, conn in workers.values():
        conn.send(("stop", 0))
        p.join()
    ref = variants[0]
    out = {}
    for v in variants:
        d = res[v]
        out[v] = {"wall": statistics.median(d["wall"]), "cpu": statistics.median(d["cpu"]), "peak": d["peak"],
                  "flops": d["flops"],
                  "wall_ratio": statistics.median(a / b for a, b in zip(d["wall"], res[ref]["wall"])),
                  "cpu_ratio": statistics.median(a / b for a, b in zip(d["cpu"], res[ref]["cpu"])),
                  "peak_ratio": d["peak"] / max(res[ref]["peak"], 1e-9)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,small", help="comma-separated: tiny, small, base (base: for a GPU)")
    parser.add_argument("--objectives", default="dino,mocov3")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant and round (their median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant's forward")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (with --compile)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (with --compile)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    have_peer = importlib.util.find_spec("lightly") is not None
    if not have_peer:
        print("lightly is not installed (pip install -e '.[bench]'): the peer rows are skipped.", flush=True)
    lines = ["| model | objective | peer step wall / CPU (s) | ours / peer wall | ours / peer CPU | ours / peer memory | "
             "ours / fused peer wall | ours / fused peer CPU | ours / fused peer memory | "
             "MFASSL / ours CPU | FLOP ratio | measured / FLOP | peak MiB peer / fused peer / ours / MFASSL |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in args.models.split(","):
        for objective in args.objectives.split(","):
            variants = ["ours", "mfassl"] + (["peer", "peer_fused"] if have_peer else [])
            r = compare(model, objective, variants, args)
            o, m = r["ours"], r["mfassl"]
            pred = m["flops"] / o["flops"]
            if have_peer:
                p, f = r["peer"], r["peer_fused"]
                # the ratios are stored relative to "ours"; invert the peers' for ours / peer
                peer_cols = (f"{p['wall']:.3f} / {p['cpu']:.3f} | {1 / p['wall_ratio']:.2f} | {1 / p['cpu_ratio']:.2f} | "
                             f"{1 / p['peak_ratio']:.2f} | {1 / f['wall_ratio']:.2f} | {1 / f['cpu_ratio']:.2f} | "
                             f"{1 / f['peak_ratio']:.2f}")
                mems = f"{p['peak']:.0f} / {f['peak']:.0f} / {o['peak']:.0f} / {m['peak']:.0f}"
                flop_note = f" (peer/ours FLOPs {p['flops'] / o['flops']:.3f})"
            else:
                peer_cols, mems, flop_note = ("- | - | - | - | - | - | -",
                                              f"- / - / {o['peak']:.0f} / {m['peak']:.0f}", "")
            lines.append(f"| ViT-{model} | {objective} | {peer_cols} | {m['cpu_ratio']:.2f} | {pred:.2f} | "
                         f"{m['cpu_ratio'] / pred:.2f} | {mems} |")
            print(lines[-1] + flop_note, f"[ours wall {o['wall']:.3f} s cpu {o['cpu']:.3f} s; MFASSL/ours wall "
                  f"{m['wall_ratio']:.2f}]", flush=True)
    mem_kind = "CUDA max allocated above the built model" if args.device == "cuda" else \
        "peak RSS above the built model and optimizer (ru_maxrss delta)"
    note = (f"Device: {device_name(torch.device(args.device))}; one thread per variant "
            f"(torch.set_num_threads(1)); batch {args.batch} images of 1x256x256; {args.rounds} interleaved rounds "
            f"of {args.steps} step(s) after a warm-up, medians of per-round ratios; memory is {mem_kind}. "
            f"Peer: lightly {_lightly_version()}. torch {torch.__version__}, Python {platform.python_version()}.")
    if args.compile:
        note += (f" Every variant compiled with torch.compile (mode {args.compile_mode}, backend "
                 f"{args.compile_backend}; ours through mfassl.engine.compile_forward, the peer's modules directly), "
                 f"{COMPILE_WARMUP} untimed steps first; FLOPs counted on an eager step.")
    table = "\n".join(lines)
    title = SECTION + (" with torch.compile" if args.compile else "")
    publish(table, note, section_title(title, args.device), write=args.write, script="peer_step.py")


def _lightly_version() -> str:
    try:
        from importlib.metadata import version

        return version("lightly")
    except Exception:  # noqa: BLE001 - absent or unreadable metadata
        return "absent"


if __name__ == "__main__":
    main()
