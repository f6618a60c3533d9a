"""``python -m mfassl_medical demo`` (what ``make demo`` runs): the BraTS pretraining bundle on the demo data.

Builds the synthetic demo data on first use (no download), runs
``bundles/mfassl_brats_pretrain`` with its short ``configs/demo.json`` schedule (a small 3D MFA-ViT, MoCo-v3 —
DINO needs longer schedules and larger batches than a demo to move off its uniform start — with the symmetry
terms and MFA switched on within the run) and ends with the bundle's report: losses, gate statistics, axis
confidence, the PNG figures, the checkpoint and TensorBoard folders, and how to go on. The bundle logs that
report at INFO and its ``configs/logging.conf`` shows INFO on the console.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "bundle_dir", "follow_up_commands"]


def bundle_dir(name: str = "mfassl_brats_pretrain") -> Path:
    """The bundle folder of a source checkout (the repository's ``bundles/``)."""
    path = Path(__file__).resolve().parents[1] / "bundles" / name
    if not (path / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"bundle {name} not found at {path}; run the demo from a checkout of the repository.")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfassl_medical demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/demo", help="where checkpoints, logs and figures go")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo schedule's epochs")
    parser.add_argument("--objective", default=None, help="mocov3 (the demo default), dino, mae")
    parser.add_argument("--baseline", action="store_true", help="run the flip baseline (mirror=False)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING)
    # torch and MONAI are imported once the command line is parsed, so --help answers at once
    from monai.bundle import run

    from mfassl_medical.demo_data import build_demo_data, default_demo_root

    t0 = time.perf_counter()
    print(f"demo data: {default_demo_root()} (synthetic; built once, then reused)", flush=True)
    build_demo_data()
    root = bundle_dir()
    overrides = {"bundle_root": str(root), "output_dir": str(Path(args.output_dir).resolve())}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.objective is not None:
        overrides["objective"] = args.objective
    if args.baseline:
        overrides["mirror"] = False
    configs = [str(root / "configs" / "train.json"), str(root / "configs" / "demo.json")]
    print(f"running bundle {root.name} with configs/train.json + configs/demo.json ...", flush=True)
    run(config_file=configs, logging_file=str(root / "configs" / "logging.conf"), **overrides)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s. Same run by hand:\n"
          f"  python -m monai.bundle run --config_file \"['{configs[0]}','{configs[1]}']\" "
          f"--bundle_root {root} --output_dir {overrides['output_dir']}")
    print("The demo encoder is in models/demo/model.pt of the bundle (a smaller network than its network_def).\n"
          "Evaluate, infer and export it (the bundle README, 'Evaluate, infer and export the demo encoder'):\n"
          + "\n".join(f"  {line}" for line in follow_up_commands(root)))
    return 0


def follow_up_commands(root: Path) -> list[str]:
    """The commands that evaluate, infer and export the demo encoder, as the bundle README gives them."""
    merged = "\"['configs/train.json','configs/{}.json','configs/demo.json']\" --bundle_root ."
    return [f"cd {root}",
            "python -m monai.bundle run --config_file " + merged.format("evaluate"),
            "python -m monai.bundle run --config_file " + merged.format("inference"),
            "python -m monai.bundle ckpt_export network_def --filepath models/demo/model.ts "
            "--ckpt_file models/demo/model.pt --meta_file configs/metadata.json "
            "--config_file \"['configs/inference.json','configs/demo.json']\" --bundle_root ."]


if __name__ == "__main__":
    raise SystemExit(main())
