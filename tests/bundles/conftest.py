"""Bundle tests build the demo data once, in a temporary folder unless MFASSL_DEMO_DIR is set."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _demo_dir(tmp_path_factory):
    old = os.environ.get("MFASSL_DEMO_DIR")
    if not old:
        os.environ["MFASSL_DEMO_DIR"] = str(tmp_path_factory.mktemp("demo"))
    yield
    if not old:
        os.environ.pop("MFASSL_DEMO_DIR", None)
