"""Run by ``torchrun --nproc_per_node=2`` in test_engine.py: a tiny MFASSL run on gloo, and InfoNCE's key gather.

Each rank writes ``rank{r}.json`` (its per-step losses, the dataset rows of each of its batches, its InfoNCE
loss and query gradient) and ``rank{r}.pt`` (its final state dict); the test compares the ranks with each
other and with a single-process run of the same global batches.
"""

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
from helpers import fixed_view_dino  # noqa: E402

from mfassl.engine import create_optimizer, create_trainer, default_prepare_batch  # noqa: E402
from mfassl.objectives import InfoNCELoss  # noqa: E402

# shared with test_engine.py, which repeats the run in one process
N_IMAGES, GLOBAL_BATCH, EPOCHS, BASE_LR = 16, 8, 2, 0.032  # peak lr 1e-3 at batch 8
INFONCE_SHAPE, INFONCE_TEMP = (8, 6), 0.2


def dataset() -> TensorDataset:
    """``(N, 1, 40, 40)`` images and their row numbers."""
    images = torch.rand(N_IMAGES, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    return TensorDataset(images, torch.arange(N_IMAGES))


def infonce_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The global ``(B, D)`` queries and keys of the InfoNCE check (the same on every rank)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(*INFONCE_SHAPE, generator=g), torch.randn(*INFONCE_SHAPE, generator=g)


def training(local_rank: int, out_dir: str) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    method = fixed_view_dino()
    loader = idist.auto_dataloader(dataset(), batch_size=GLOBAL_BATCH, shuffle=True, num_workers=0, drop_last=True)
    rows: list[list[int]] = []

    def prepare_batch(batch, device):
        rows.append(batch[1].tolist())
        return default_prepare_batch(batch[0], device)

    opt = create_optimizer(method)
    trainer = create_trainer(method, opt, steps_per_epoch=len(loader), max_epochs=EPOCHS, batch_size=GLOBAL_BATCH,
                             base_lr=BASE_LR, warmup_epochs=0.5, output_dir=out_dir, progress=False,
                             prepare_batch=prepare_batch)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run(loader, max_epochs=EPOCHS)
    torch.save(method.state_dict(), Path(out_dir, f"rank{rank}.pt"))

    # InfoNCE on this rank's rows of the queries, against the keys of every rank (gathered in the loss)
    q, k = infonce_inputs()
    per = q.shape[0] // world
    q_mine = q[rank * per:(rank + 1) * per].clone().requires_grad_(True)
    loss = InfoNCELoss(INFONCE_TEMP)(q_mine, k[rank * per:(rank + 1) * per])
    loss.backward()

    result = {"rank": rank, "world": world, "losses": losses, "rows": rows, "infonce": float(loss),
              "infonce_grad": q_mine.grad.tolist()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
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
