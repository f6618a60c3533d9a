"""bench/swin_attention.py, reduced (2D, 28 x 28, one round): both encoders share their weights, agree on the
output, and the table rows carry real times."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "swin_attention.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_swin_attention", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_swin_attention"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_pair_shares_weights_and_rows_are_measured():
    bench = _bench()
    stock, fused = bench.build_pair(2, torch.device("cpu"))
    assert type(stock).__name__ == "SwinTransformer" and type(fused).__name__ == "ScriptableSwinTransformer"
    for (name, a), (_, b) in zip(stock.state_dict().items(), fused.state_dict().items()):
        assert torch.equal(a, b), name
    rows = bench.measure(dims=2, size=28, batch=1, rounds=1, device=torch.device("cpu"))
    assert [r["mode"] for r in rows] == ["no grad", "train"]
    for r in rows:
        assert r["monai"] > 0 and r["fused"] > 0 and r["ratio"] > 0
        assert r["diff"] < 1e-4  # the same encoder output to float rounding
