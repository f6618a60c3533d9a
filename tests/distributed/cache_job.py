"""A job of the two-rank launch (``two_ranks.py``): two gloo ranks share one disk cache of the CheXpert bundle's
preprocessing (tiny sizes), each through a DataLoader worker and then directly, in two runs: the first fills the
cache, the second must only load it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader, DistributedSampler

from bundle_utils import TINY  # tests/bundles, on the path of the launch

ROOT = Path(__file__).resolve().parents[2]


def read_through_the_cache(data_dir: str, out_dir: str, rank: int, world: int) -> dict:
    """One run's reads: a fresh bundle dataset read by a DataLoader worker (this rank's share), then every item
    directly; the counts say how many items were computed and how many loaded from the disk cache."""
    bundle = ROOT / "bundles" / "mfassl_chexpert_pretrain"
    p = ConfigParser()
    p.read_config(str(bundle / "configs" / "train.json"))
    p.update({"bundle_root": str(bundle), **TINY["mfassl_chexpert_pretrain"], "max_images": None,
              "dataset_dir": data_dir, "output_dir": str(Path(out_dir) / "run")})
    ds = p.get_parsed_content("train#dataset")
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=1)
    seen = sum(int(b["image"].shape[0]) for b in loader)
    dist.barrier()
    # every rank now reads every item: all of them must come from the cache the two ranks wrote
    sums = [float(torch.as_tensor(ds[i]["image"]).double().sum()) for i in range(len(ds))]
    cache = Path(ds.dataset.cache_dir)
    return {"rank": rank, "world": world, "seen": seen, "sums": sums, "computed": ds.dataset.computed,
            "loaded": ds.dataset.loaded, "cache_dir": str(cache), "bad": ds.summary()["bad_samples"],
            "mtimes": {f.name: f.stat().st_mtime_ns for f in sorted(cache.glob("*.pt"))}}


def main(data_dir: str, out_dir: str) -> None:
    """Two runs in the launch's process group: the first fills the cache, the second, with new datasets, must
    only load it; each rank writes ``rank{r}.json``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    rank, world = dist.get_rank(), dist.get_world_size()
    runs = []
    for _ in range(2):
        runs.append(read_through_the_cache(data_dir, out_dir, rank, world))
        dist.barrier()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(runs))
