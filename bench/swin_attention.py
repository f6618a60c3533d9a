"""Swin window attention: the fused encoder (``mfassl.backbones.swin_script``) against MONAI's, same weights.

Usage::

    python bench/swin_attention.py [--dims 3] [--size 64] [--batch 1] [--rounds 5] [--device cpu] [--write]

MONAI's ``SwinTransformer`` writes the window attention out (``q k^T``, position bias, mask, softmax, ``@ v``)
and fuses it only without gradients, and only when built with ``use_flash_attention``;
:func:`mfassl.backbones.swin_script.make_swin_scriptable`, which :class:`~mfassl.backbones.MFASwin` applies to its
encoder, runs one ``F.scaled_dot_product_attention`` with the bias and mask as its additive mask, with or
without gradients. Both encoders here are the BraTS bundle's Swin (``feature_size`` 48, depths 2/2/2/2, heads
3/6/12/24, window 7, 4 input channels) with the same weights (a copy made scriptable), timed in interleaved
rounds on the same batch:

- ``no grad``: a forward under ``torch.no_grad`` (the teacher of every objective, inference, MONAI Label);
- ``train``: forward and backward of the summed last-stage features (the student).

Reports the medians of the per-round times, the median per-round ratio fused / MONAI, the largest difference of
the outputs, and on CUDA the peak memory of each. The baseline is MONAI's module tree measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.networks.nets.swin_unetr import SwinTransformer

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import device_name, publish, section_title  # noqa: E402

from mfassl.backbones.swin_script import make_swin_scriptable  # noqa: E402

SECTION = "Swin window attention"
BRATS_SWIN = dict(embed_dim=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window=7, in_chans=4)


def build_pair(dims: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """MONAI's Swin encoder and a scriptable (fused-attention) copy with the same weights."""
    torch.manual_seed(0)
    cfg = BRATS_SWIN
    stock = SwinTransformer(in_chans=cfg["in_chans"], embed_dim=cfg["embed_dim"], window_size=(cfg["window"],) * dims,
                            patch_size=(2,) * dims, depths=cfg["depths"], num_heads=cfg["num_heads"],
                            spatial_dims=dims).to(device)
    with torch.no_grad():  # a position bias that matters (MONAI initialises it near 0)
        for name, p in stock.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.5)
    return stock, make_swin_scriptable(copy.deepcopy(stock))


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(dims: int, size: int, batch: int, rounds: int, device: torch.device) -> list[dict]:
    stock, fused = build_pair(dims, device)
    x = torch.randn(batch, BRATS_SWIN["in_chans"], *(size,) * dims, generator=torch.Generator().manual_seed(1)).to(device)
    nets = {"monai": stock, "fused": fused}

    def no_grad(net):
        with torch.no_grad():
            return net(x, normalize=True)[4]

    def train(net):
        net.zero_grad(set_to_none=True)
        net(x, normalize=True)[4].sum().backward()

    with torch.no_grad():
        diff = float((no_grad(stock) - no_grad(fused)).abs().max())
    rows = []
    for mode, fn in (("no grad", no_grad), ("train", train)):
        times = {k: [] for k in nets}
        peaks = {k: 0.0 for k in nets}
        for net in nets.values():  # warm-up
            fn(net)
        for r in range(rounds):
            order = list(nets) if r % 2 == 0 else list(nets)[::-1]
            for k in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                times[k].append(_timed(lambda: fn(nets[k]), device))
                if device.type == "cuda":
                    peaks[k] = max(peaks[k], (torch.cuda.max_memory_allocated() - base) / 2**20)
        ratio = statistics.median(f / m for f, m in zip(times["fused"], times["monai"]))
        rows.append(dict(mode=mode, monai=statistics.median(times["monai"]), fused=statistics.median(times["fused"]),
                         ratio=ratio, peak_monai=peaks["monai"], peak_fused=peaks["fused"], diff=diff))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3))
    parser.add_argument("--size", type=int, default=64, help="input side (voxels or pixels)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: torch's default)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.dims, args.size, args.batch, args.rounds, device)
    cuda = device.type == "cuda"
    lines = ["| step | MONAI (s) | fused (s) | fused / MONAI | peak MiB MONAI / fused | max output difference |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = f"{r['peak_monai']:.0f} / {r['peak_fused']:.0f}" if cuda else "-"
        lines.append(f"| {r['mode']} | {r['monai']:.3f} | {r['fused']:.3f} | {r['ratio']:.2f} | {mem} | "
                     f"{r['diff']:.1e} |")
    note = (f"Device: {device_name(device)}; the BraTS bundle's Swin encoder ({args.dims}D, feature size 48, depths "
            f"2/2/2/2, heads 3/6/12/24, window 7, 4 channels) on a batch of {args.batch} x {args.size}^{args.dims}; "
            f"{args.rounds} interleaved rounds after a warm-up, medians (the ratio: median of the per-round ratios); "
            f"torch {torch.__version__}.")
    table = "\n".join(lines)
    publish(table, note, section_title(SECTION, device), write=args.write, script="swin_attention.py")


if __name__ == "__main__":
    main()
