"""A job of the two-rank launch (``two_ranks.py``): a tiny MFASSL run on gloo, and InfoNCE's key gather.

Each rank writes ``rank{r}.json`` (its per-step losses, the dataset rows of each of its batches, its InfoNCE
loss and query gradient) and ``rank{r}.pt`` (its final state dict); the test compares the ranks with each
other and with a single-process run of the same global batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from torch.utils.data import TensorDataset

from helpers import fixed_view_dino  # tests/core, on the path of the launch and of the tests

from mfassl.engine import create_optimizer, create_trainer, default_prepare_batch
from mfassl.objectives import InfoNCELoss

# shared with test_two_ranks.py, which repeats the run in one process
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


def training(out_dir: str) -> None:
    """Two epochs of :func:`helpers.fixed_view_dino` on :func:`dataset`, each rank on its half of every global
    batch (``idist.auto_dataloader``, the process group the launch made), then the InfoNCE check."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
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
