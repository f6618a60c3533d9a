"""One ``torchrun`` rank of the test suite's two-rank launch: every check that needs two processes runs here in
turn, in one process group, so that the ranks' start-up (torch and MONAI imports, about 10 s a rank on a 2-core
machine) is paid once for all of them (``test_two_ranks.py`` beside it launches it and checks what each job
wrote).

Usage (each argument one job, JSON-encoded)::

    python -m torch.distributed.run --nproc_per_node=2 tests/two_ranks.py JOB [JOB ...]

A job is either a list, the strings a user types after ``python -m monai.bundle`` (parsed by ``fire`` as MONAI's
entry point parses them), or ``{"call": "module:function", "args": [...]}``, a function of a module in
``tests/distributed`` (this folder) called with ``args``. Each job that finishes writes ``<done_dir>/<i>.done``
(``done_dir`` is the environment's ``TWO_RANKS_DONE``, when set), so a test can say which job stopped the
launch.

The launch keeps one process group (gloo): the bundles' ``finalize`` would end it
(``dist.destroy_process_group()``), which is deferred to the end of the last job, and the next bundle's
``initialize`` finds it (``dist.is_initialized() or dist.init_process_group(...)``); ignite's ``idist`` and the
core jobs use the group they find. A rank that fails stops the launch.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def run_job(job: list[str] | dict) -> None:
    """One job: a ``python -m monai.bundle`` command line or a ``{"call": "module:function", "args": [...]}``."""
    if isinstance(job, dict):
        module, name = job["call"].split(":")
        getattr(importlib.import_module(module), name)(*job.get("args", []))
        return
    import fire
    from monai.bundle import scripts

    from cli_runner import BUNDLE_COMMANDS

    commands = {name: getattr(scripts, name) for name in BUNDLE_COMMANDS}
    fire.Fire(commands, command=[str(a) for a in job], name="python -m monai.bundle")


def main(argv: Sequence[str]) -> int:
    """Run each JSON-encoded job of ``argv`` in one gloo process group; 0 when all succeeded."""
    import torch.distributed as dist

    for folder in (TESTS, TESTS / "core", TESTS / "bundles"):  # cli_runner; helpers; bundle_utils
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    done = os.environ.get("TWO_RANKS_DONE")
    dist.init_process_group("gloo")
    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda group=None: None  # the bundles' finalize: kept for the next job
    try:
        for i, line in enumerate(argv):
            run_job(json.loads(line))
            gc.collect()  # DDP's pending work objects of the job go before the next job (and the group)
            dist.barrier()
            if done and dist.get_rank() == 0:
                Path(done, f"{i}.done").touch()
    finally:
        dist.destroy_process_group = destroy
        if dist.is_initialized():
            destroy()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # The results are on disk and the group is destroyed. Skip the interpreter's teardown, where gloo's worker
    # threads can still abort the process now and then (SIGABRT after a finished, correct run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
