"""Everything the suite checks with two processes, from one ``torchrun --nproc_per_node=2`` launch on gloo.

One launch (``two_ranks.py``) runs its jobs in turn in each rank, in one process group, so the ranks' start-up
(torch and MONAI imports, about 10 s a rank on a 2-core machine) is paid once for all of them:

1. the engine (``engine_job.py``): a tiny MFASSL run whose ranks take disjoint halves of each global batch,
   and InfoNCE's key gather; compared here with one process on the same global batches;
2. the pretraining bundles' disk cache (``cache_job.py``): both ranks write it at once, every rank reads what
   the other computed, and a second run (new datasets, same launch) recomputes nothing;
3. the bundles' ``configs/multi_gpu_*.json``, as the zoo's bundles have them: the BraTS pretraining's multi-GPU
   training, the segmentation bundle's multi-GPU training and the evaluation of its weights
   (``multi_gpu_evaluate.json``), each the command line a user types.

Each test checks what its job wrote; a job that fails stops the launch, and the tests of that job and of the
jobs after it say which job it was.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _folder in (ROOT / "tests" / "core", ROOT / "tests" / "bundles"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import engine_job  # noqa: E402
from bundle_utils import BUNDLES, TINY, cli_args  # noqa: E402
from helpers import fixed_view_dino  # noqa: E402

from mfassl.engine import create_optimizer, create_trainer, find_last_checkpoint, load_checkpoint  # noqa: E402
from mfassl_medical.label_app import TINY_NETWORK  # noqa: E402

PRETRAIN = "mfassl_brats_pretrain"
SEGMENTATION = "mfassl_brats_segmentation"
JOBS = ("engine", "cache", "pretrain multi-GPU training", "segmentation multi-GPU training",
        "segmentation multi-GPU evaluation")
"""The launch's jobs, in the order they run."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, free_port_factory) -> dict:
    """The launch's ``CompletedProcess``, its folder of finished-job markers and each job's output folder."""
    from test_data_scale import write_chexpert

    tmp = tmp_path_factory.mktemp("two_ranks")
    engine_out, cache_out = tmp / "engine", tmp / "cache"
    data = write_chexpert(tmp / "chexpert", 8)
    pre_root = BUNDLES / PRETRAIN
    pre_out = tmp / "pretrain"
    pretrain = ["run", "--config_file", json.dumps([str(pre_root / "configs" / c) for c in
                                                    ("train.json", "multi_gpu_train.json")]),
                "--bundle_root", str(pre_root), "--output_dir", str(pre_out), "--epochs", "1",
                "--model_file", str(pre_out / "models" / "model.pt"), *cli_args(TINY[PRETRAIN])]
    seg_root = tmp / "segmentation"  # a copy of the bundle folder, as --bundle_root names it in the README
    shutil.copytree(BUNDLES / SEGMENTATION, seg_root,
                    ignore=shutil.ignore_patterns("models", "eval", "logs", "predictions", "__pycache__"))
    configs = seg_root / "configs"
    # cache_rate 0: the one training step reads one case per rank instead of caching every training case first
    common = ["run", "--bundle_root", str(seg_root), "--max_cases", "8", "--cache_rate", "0",
              *cli_args(TINY_NETWORK)]
    seg_train = common + ["--config_file", json.dumps([str(configs / c) for c in
                                                       ("train.json", "multi_gpu_train.json")]),
                          "--epochs", "1", "--epoch_length", "1"]
    seg_evaluate = common + ["--config_file", json.dumps([str(configs / c) for c in
                                                          ("train.json", "evaluate.json", "multi_gpu_evaluate.json")])]
    jobs = [{"call": "engine_job:training", "args": [str(engine_out)]},
            {"call": "cache_job:main", "args": [str(data), str(cache_out)]},
            pretrain, seg_train, seg_evaluate]
    assert len(jobs) == len(JOBS)
    done = tmp / "done"
    done.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port_factory()}", str(HERE / "two_ranks.py"), *map(json.dumps, jobs)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TWO_RANKS_DONE=str(done))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    return {"res": res, "done": done, "engine": engine_out, "cache": cache_out, "pretrain": pre_out,
            "segmentation": seg_root}


def _finished(launch: dict, job: str) -> None:
    """The job ran to its end in both ranks; else which job stopped the launch, and the launch's output."""
    i = JOBS.index(job)
    if (launch["done"] / f"{i}.done").is_file():
        return
    res = launch["res"]
    first = next(j for k, j in enumerate(JOBS) if not (launch["done"] / f"{k}.done").is_file())
    pytest.fail(f"job {job!r} did not finish: the launch stopped in job {first!r} (exit {res.returncode})\n"
                + res.stdout[-3000:] + res.stderr[-5000:])


# ---------------------------------------------------------------------------------------------------- the engine
def _single_process_run(batches, epochs, base_lr):
    """The distributed run's settings in this process, on the given global batches in order."""
    method = fixed_view_dino()
    steps_per_epoch = len(batches) // epochs
    trainer = create_trainer(method, create_optimizer(method), steps_per_epoch, epochs, batch_size=len(batches[0]),
                             base_lr=base_lr, warmup_epochs=0.5, output_dir=None, progress=False)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run(batches, max_epochs=epochs, epoch_length=steps_per_epoch)
    return losses, method


def _engine_results(launch: dict) -> list[dict]:
    _finished(launch, "engine")
    return [json.loads((launch["engine"] / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_process_gloo_run_matches_one_process_on_the_global_batch(launch):
    from mfassl.objectives import InfoNCELoss

    w = engine_job
    out, res = launch["engine"], _engine_results(launch)
    steps = w.EPOCHS * w.N_IMAGES // w.GLOBAL_BATCH
    assert [(r["rank"], r["world"], len(r["losses"])) for r in res] == [(0, 2, steps), (1, 2, steps)]
    # each step the ranks took disjoint halves of the global batch, and each epoch covered the data once
    for a, b in zip(res[0]["rows"], res[1]["rows"]):
        assert len(a) == len(b) == w.GLOBAL_BATCH // 2 and not set(a) & set(b)
    per_epoch = steps // w.EPOCHS
    for e in range(w.EPOCHS):
        seen = sum((res[r]["rows"][i] for r in (0, 1) for i in range(e * per_epoch, (e + 1) * per_epoch)), [])
        assert sorted(seen) == list(range(w.N_IMAGES))

    # the ranks end with identical weights, teacher and DINO centres (gradients and centres were averaged)
    states = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    ckpt = load_checkpoint(find_last_checkpoint(out / "checkpoints"))
    assert ckpt["trainer"]["iteration"] == steps
    for k, v in states[0].items():
        assert torch.equal(ckpt["model"][k], v), k

    # one process on the same global batches: the same losses (the mean of the ranks') and weights (measured:
    # losses within 3e-7 relative, every tensor's change within 4e-5 of its norm)
    images = w.dataset().tensors[0]
    batches = [images[a + b] for a, b in zip(res[0]["rows"], res[1]["rows"])]
    single, method = _single_process_run(batches, w.EPOCHS, w.BASE_LR)
    ddp = [(x + y) / 2 for x, y in zip(res[0]["losses"], res[1]["losses"])]
    assert ddp == pytest.approx(single, rel=1e-5)
    assert abs(single[-1] - single[0]) > 0.05 * single[0]  # the steps moved the loss far more than that
    assert max(abs(x - y) for x, y in zip(res[0]["losses"], res[1]["losses"])) > 1e-3  # the halves differ
    start = fixed_view_dino().state_dict()
    for k, v in method.state_dict().items():
        moved = (v - start[k]).double().norm()
        if moved == 0:  # what the steps do not change stays equal
            assert torch.equal(states[0][k], v), k
            continue
        gap = (states[0][k] - v).double().norm()
        assert gap <= 1e-3 * moved, (k, float(gap), float(moved))

    # InfoNCE with the keys gathered from both ranks is the global loss; each rank's query gradient its rows'
    q, k = w.infonce_inputs()
    q = q.clone().requires_grad_(True)
    loss = InfoNCELoss(w.INFONCE_TEMP)(q, k)
    loss.backward()
    assert (res[0]["infonce"] + res[1]["infonce"]) / 2 == pytest.approx(float(loss), rel=1e-6)
    local = torch.tensor(res[0]["infonce_grad"] + res[1]["infonce_grad"]) / 2
    torch.testing.assert_close(local, q.grad, rtol=1e-5, atol=1e-7)


def test_two_process_gloo_run_reshuffles_every_epoch(launch):
    res = _engine_results(launch)
    per_epoch = engine_job.N_IMAGES // engine_job.GLOBAL_BATCH
    first, second = res[0]["rows"][:per_epoch], res[0]["rows"][per_epoch:2 * per_epoch]
    assert sorted(sum(first, [])) != sorted(sum(second, []))  # rank 0 reads another half of the data


# ------------------------------------------------------------------------------------------------ the disk cache
def test_two_gloo_ranks_share_the_disk_cache(launch):
    _finished(launch, "cache")
    first, second = zip(*[json.loads((launch["cache"] / f"rank{r}.json").read_text()) for r in (0, 1)])
    assert {r["world"] for r in first} == {2} and sum(r["seen"] for r in first) == 8
    cache = Path(first[0]["cache_dir"])
    assert first[1]["cache_dir"] == str(cache) and cache.parent == launch["cache"] / "cache"
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


# ---------------------------------------------------------------------------------- the bundles' multi-GPU configs
def test_multi_gpu_config_runs_two_gloo_processes(launch: dict) -> None:
    """The pretraining bundle: 6 cases, 2 processes, batch 2 each: 1 step per epoch per process; rank 0 saves."""
    _finished(launch, "pretrain multi-GPU training")
    out = launch["pretrain"]
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"] == 1
    assert list((out / "checkpoints").glob("checkpoint_*.pt"))
    assert (out / "models" / "model.pt").is_file()  # rank 0 saved the encoder


def test_multi_gpu_train_and_evaluate_configs_run_two_gloo_processes(launch: dict) -> None:
    """The segmentation bundle: rank 0 alone writes the checkpoints and the metrics files; the evaluation gathers
    both ranks' validation cases."""
    _finished(launch, "segmentation multi-GPU evaluation")
    res = launch["res"]
    assert res.stdout.count("Train completed") + res.stderr.count("Train completed") == 1  # rank 0's log only
    root = launch["segmentation"]
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the DDP wrapper is not in the saved keys
    with open(root / "eval" / "dice_wt_raw.csv") as f:
        assert len(list(csv.reader(f))) == 3  # header + both validation cases, gathered from the two ranks
