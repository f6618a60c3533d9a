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


def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


def refuse_network(monkeypatch) -> None:
    """An offline run in this interpreter: every socket connection and name lookup raises (undone with the test's
    ``monkeypatch``); MLflow's telemetry off and no tracking server from the caller's environment."""
    import os
    import socket

    for owner, attr in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, attr, _refuse)
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
