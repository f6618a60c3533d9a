"""Run by ``torchrun --nproc_per_node=2`` in test_engine.py: a tiny MFASSL run on gloo."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from helpers import tiny_method  # noqa: E402

from mfassl.engine import create_optimizer, create_trainer  # noqa: E402


def training(local_rank: int, out_dir: str) -> None:
    method = tiny_method("mocov3")
    data = TensorDataset(torch.rand(16, 1, 40, 40, generator=torch.Generator().manual_seed(0)))
    loader = idist.auto_dataloader(data, batch_size=8, shuffle=True, num_workers=0, drop_last=True)
    opt = create_optimizer(method)
    trainer = create_trainer(method, opt, steps_per_epoch=len(loader), max_epochs=2, batch_size=8, warmup_epochs=0.5,
                             output_dir=out_dir, progress=False)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run(loader, max_epochs=2)
    # parameters stay identical across processes (DDP averaged the gradients)
    flat = torch.cat([p.detach().flatten() for p in method.backbone.parameters()])
    gathered = idist.all_gather(flat.unsqueeze(0))
    result = {"rank": idist.get_rank(), "world": idist.get_world_size(), "losses": losses,
              "in_sync": bool(torch.allclose(gathered[0], gathered[-1], atol=1e-6)), "steps": len(losses)}
    Path(out_dir, f"rank{idist.get_rank()}.json").write_text(json.dumps(result))
    del trainer, method, opt, loader
    gc.collect()  # DDP's pending work objects go before the process group does


if __name__ == "__main__":
    with idist.Parallel(backend="gloo") as parallel:
        parallel.run(training, sys.argv[1])
    # The results are on disk and the group is destroyed. Skip the interpreter's teardown, where gloo's
    # worker threads can still abort the process now and then (SIGABRT after a finished, correct run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
