"""What the bundle tests share: the bundles' folder, tiny overrides and a run helper."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"

TINY = {
    "mfassl_brats_pretrain": {
        "network_def#embed_dim": 48, "network_def#depth": 2, "network_def#num_heads": 4, "network_def#mfa_layer": 1,
        "roi_size": [32, 32, 32], "local_size": [16, 16, 16], "n_local": 1, "max_cases": 6, "batch_size": 2,
        "objective_args#dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32},
        "t_sym": 1.0, "t_mfa": 0.5, "t_gate": 1.0, "warmup_epochs": 0.5, "progress": False,
    },
    "mfassl_chexpert_pretrain": {
        "network_def#img_size": 32, "network_def#embed_dim": 48, "network_def#depth": 2, "network_def#num_heads": 4,
        "network_def#mfa_layer": 1, "image_size": [48, 48], "global_size": [32, 32], "local_size": [16, 16],
        "n_local": 1, "max_images": 8, "batch_size": 4,
        "objective_args#dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32},
        "t_sym": 1.0, "t_mfa": 0.5, "t_gate": 1.0, "warmup_epochs": 0.5, "progress": False,
    },
}


def run_bundle(name: str, out: Path, configs=("train.json",), **overrides) -> dict:
    from monai.bundle import run

    root = BUNDLES / name
    tiny = {k: v for k, v in TINY[name].items()
            if not (("swin.json" in configs or "axial2d.json" in configs) and k.startswith("network_def#"))}
    kw = {**tiny, "model_file": str(out / "models" / "model.pt"), **overrides}
    run(config_file=[str(root / "configs" / c) for c in configs], bundle_root=str(root), output_dir=str(out), **kw)
    return json.loads((out / "report.json").read_text())


def cli_args(overrides: dict) -> list[str]:
    """``--key value`` pairs as a user types them (strings; lists and dicts as JSON)."""
    args: list[str] = []
    for k, v in overrides.items():
        args += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return args


# Installed into a child interpreter (sitecustomize) so that a command-line run is offline.
NO_NETWORK = '''
import socket


def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def offline_env(folder: Path) -> dict[str, str]:
    """The environment of an offline child interpreter: sockets refused (a ``sitecustomize`` written to
    ``folder``), MLflow's telemetry off, no tracking server from the caller's environment."""
    import os

    (folder / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", OMP_NUM_THREADS="1")
    return env
