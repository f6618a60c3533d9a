"""bench/swin_attention.py, reduced (2D, 28 x 28, one round): both encoders share their weights, agree on the
output, and the table rows carry real times."""

from __future__ import annotations

import torch

from bench_loader import load_bench


def test_pair_shares_weights_and_rows_are_measured():
    bench = load_bench("swin_attention")
    stock, fused = bench.build_pair(2, torch.device("cpu"))
    assert type(stock).__name__ == "SwinTransformer" and type(fused).__name__ == "ScriptableSwinTransformer"
    for (name, a), (_, b) in zip(stock.state_dict().items(), fused.state_dict().items()):
        assert torch.equal(a, b), name
    rows = bench.measure(dims=2, size=28, batch=1, rounds=1, device=torch.device("cpu"))
    assert [r["mode"] for r in rows] == ["no grad", "train"]
    for r in rows:
        assert r["monai"] > 0 and r["fused"] > 0 and r["ratio"] > 0
        assert r["diff"] < 1e-4  # the same encoder output to float rounding
