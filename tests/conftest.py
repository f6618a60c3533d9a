"""Shared test settings: deterministic seeds, few threads, no downloads."""

from __future__ import annotations

import os
import random
import socket
from typing import Callable

import numpy as np
import pytest
import torch

os.environ.setdefault("MFASSL_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
