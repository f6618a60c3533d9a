"""Two gloo processes (torchrun) share the pretraining bundles' disk cache: both write it at once, every
rank reads what the other computed, and a second run (new datasets, same launch) recomputes nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(data: Path, out: Path) -> list[list[dict]]:
    """Each rank's two runs, ``[rank][run]``."""
    worker = Path(__file__).with_name("dist_cache_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(worker), str(data), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_gloo_ranks_share_the_disk_cache(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "bundles"))
    from test_data_scale import write_chexpert

    data = write_chexpert(tmp_path / "data", 8)
    first, second = zip(*_launch(data, tmp_path))
    assert {r["world"] for r in first} == {2} and sum(r["seen"] for r in first) == 8
    cache = Path(first[0]["cache_dir"])
    assert first[1]["cache_dir"] == str(cache) and cache.parent == tmp_path / "cache"
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 8 and not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    for r in first:  # the DataLoader workers of both ranks computed everything; the direct reads only load
        assert r["computed"] == 0 and r["loaded"] == 8 and r["bad"] == 0
    assert first[0]["sums"] == pytest.approx(first[1]["sums"], rel=1e-9)
    assert len(first[0]["mtimes"]) == 8 and first[1]["mtimes"] == first[0]["mtimes"]
    assert all(r["computed"] == 0 and r["loaded"] == 8 and r["seen"] == 4 for r in second)
    assert second[0]["mtimes"] == second[1]["mtimes"] == first[0]["mtimes"]  # nothing rewritten
    assert {f.name: f.stat().st_mtime_ns for f in files} == first[0]["mtimes"]
    assert second[0]["sums"] == pytest.approx(first[0]["sums"], rel=1e-9)
