"""Shared test settings: deterministic seeds, few threads, no downloads."""

from __future__ import annotations

import os
import random
import socket
from typing import Callable

os.environ.setdefault("MFASSL_OFFLINE", "1")
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
"""Test processes running side by side (``make test`` runs ``pytest -n auto``: one per core)."""
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
"""Threads of each test process and of the child processes tests start (torch's OpenMP pool and numpy's BLAS,
which scikit-learn's probes use): the cores shared out, so two workers on two cores do not each spin two.
OpenBLAS follows ``OMP_NUM_THREADS`` when it loads, so a test that gives a child ``OMP_NUM_THREADS=1`` sets both."""
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402  (after the thread variable, which BLAS reads when it loads)
import pytest  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

torch.set_num_threads(THREADS)
threadpool_limits(THREADS)  # BLAS loaded earlier (by a plugin) ignores the variable: limit it in place


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture()
def estimator_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of ``mfassl_medical.axis.estimate_axis`` (one entry per call; it still runs); clear to count anew."""
    import mfassl_medical.axis as axis_pkg

    calls: list[int] = []
    real = axis_pkg.estimate_axis

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(axis_pkg, "estimate_axis", counting)
    return calls


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torchrun rendezvous and test servers)."""
    return _free_port()


@pytest.fixture(scope="session")
def free_port_factory() -> Callable[[], int]:
    """``free_port`` as a function, for fixtures of a wider scope than one test."""
    return _free_port


@pytest.fixture(scope="session", autouse=True)
def _demo_dir(tmp_path_factory: pytest.TempPathFactory):
    """The demo data of this test run, built once (about a minute on 2 cores) and shared by every test and every
    ``pytest -n`` worker: ``MFASSL_DEMO_DIR`` in the run's temporary folder unless it is set already (the builder's
    file lock makes the other workers wait for the first build and reuse it)."""
    old = os.environ.get("MFASSL_DEMO_DIR")
    if not old:
        base = tmp_path_factory.getbasetemp()
        shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
        os.environ["MFASSL_DEMO_DIR"] = str(shared / "demo")
    yield
    if not old:
        os.environ.pop("MFASSL_DEMO_DIR", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order ``make test`` hands files to its ``pytest -n`` workers (``--dist loadfile --no-loadscope-reorder``):
    the MONAI Label files first, then the files with more tests, each file's tests in their own order.

    The second key is pytest-xdist's own order; the first starts the MONAI Label server test (a training run, then
    the server's start-up: about 40 s in three tests) while the other worker takes the many short files, instead
    of last, when the other worker has nothing left to do. A run in one process (no xdist worker) keeps pytest's
    own order.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    count: dict[object, int] = {}
    label: set[object] = set()
    for item in items:
        count[item.path] = count.get(item.path, 0) + 1
        if item.get_closest_marker("label") is not None:
            label.add(item.path)
    items.sort(key=lambda item: (item.path not in label, -count[item.path]))  # stable: a file's order stays
