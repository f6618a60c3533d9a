"""MFA overhead: parameters as a share of the encoder, and paired forward+backward time with/without MFA.

Usage::

    python bench/mfa_overhead.py [--batch 2] [--repeats 3] [--device cpu|cuda] [--write]

Prints a table; ``--write`` also replaces the "MFA overhead" section of bench/RESULTS.md. Both timings
come from the same run on the same inputs; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import device_name, publish, section_title  # noqa: E402
from mfassl.backbones import create_backbone  # noqa: E402


def _time_pair_interleaved(net, x_l, x_r, repeats: int) -> tuple[float, float]:
    """Median seconds of a paired forward+backward with MFA skipped and with MFA, measured alternately."""

    def step(use_mfa: bool) -> float:
        t0 = time.perf_counter()
        net.zero_grad(set_to_none=True)
        out = net.forward_paired(x_l, x_r, ramp=1.0, use_mfa=use_mfa)
        (out.out_l.float().pow(2).mean() + out.out_r.float().pow(2).mean()).backward()
        if x_l.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up
    off, on = [], []
    for _ in range(repeats):
        off.append(step(False))
        on.append(step(True))
    return statistics.median(off), statistics.median(on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    rows = []
    for name, label in (("mfa_vit_small", "ViT-S/16"), ("mfa_vit_base", "ViT-B/16")):
        net = create_backbone(name, in_chans=3).to(dev)
        n_mfa = sum(p.numel() for p in net.mfa.parameters())
        n_enc = sum(p.numel() for p in net.encoder_parameters())
        x_l = torch.randn(args.batch, 3, 224, 224, device=dev)
        x_r = torch.randn(args.batch, 3, 224, 224, device=dev)
        t_off, t_on = _time_pair_interleaved(net, x_l, x_r, args.repeats)
        rows.append((label, n_enc, n_mfa, 100.0 * n_mfa / n_enc, t_off, t_on, t_on / t_off))
    header = "| encoder | encoder params | MFA params | MFA share | paired fwd+bwd, MFA skipped (s) | with MFA (s) | ratio |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for label, n_enc, n_mfa, share, t_off, t_on, ratio in rows:
        lines.append(f"| {label} | {n_enc:,} | {n_mfa:,} | {share:.2f}% | {t_off:.3f} | {t_on:.3f} | {ratio:.3f} |")
    table = "\n".join(lines)
    note = (f"Device: {device_name(dev)}; batch {args.batch} mirror pairs of 3x224x224 (2 x {args.batch} images per pass), "
            f"the two variants alternate, median of {args.repeats} each after one warm-up; torch {torch.__version__}, Python {platform.python_version()}.")
    publish(table, note, section_title("MFA overhead", args.device), write=args.write, script="mfa_overhead.py")


if __name__ == "__main__":
    main()
