"""One ``torchrun`` rank that runs several ``python -m monai.bundle`` command lines in turn, so that a test of the
multi-GPU configs pays the ranks' start-up (torch and MONAI imports, about 10 s a rank on a 2-core machine) once
for a training run and the evaluation after it.

Usage (each argument one command line, as a JSON list of the strings a user types after ``python -m
monai.bundle``)::

    python -m torch.distributed.run --nproc_per_node=2 tests/bundle_ranks.py \\
        '["run", "--config_file", "[\\"train.json\\", \\"multi_gpu_train.json\\"]", ...]' \\
        '["run", "--config_file", "[\\"train.json\\", \\"evaluate.json\\", \\"multi_gpu_evaluate.json\\"]", ...]'

The arguments are parsed by ``fire`` as MONAI's entry point parses them. The launch keeps one process group:
each bundle's ``finalize`` would end it (``dist.destroy_process_group()``), which is deferred to the end of the
last command, and the next bundle's ``initialize`` finds it (``dist.is_initialized() or
dist.init_process_group(...)``). A rank that fails stops the launch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    """Run each JSON-encoded command line of ``argv`` with ``monai.bundle``'s commands; 0 when all succeeded."""
    import fire
    import torch.distributed as dist
    from monai.bundle import scripts

    from cli_runner import BUNDLE_COMMANDS  # this script's folder is first on sys.path

    commands = {name: getattr(scripts, name) for name in BUNDLE_COMMANDS}
    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda group=None: None  # the bundles' finalize: kept for the next command
    try:
        for line in argv:
            fire.Fire(commands, command=[str(a) for a in json.loads(line)], name="python -m monai.bundle")
    finally:
        dist.destroy_process_group = destroy
        if dist.is_initialized():
            destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
