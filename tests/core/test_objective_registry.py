"""The objective registry: every objective registers where it is defined, under its own ``name``."""

from __future__ import annotations

import subprocess
import sys

from helpers import tiny_backbone

from mfassl.objectives import OBJECTIVES, create_objective
from mfassl.objectives.registry import OBJECTIVES as LEAF_OBJECTIVES

NAMES = ["dagman", "dino", "mae", "mixedae", "mocov3"]


def test_names_and_one_registry():
    assert OBJECTIVES is LEAF_OBJECTIVES
    assert OBJECTIVES.names() == NAMES


def test_registry_key_is_the_class_name_attribute():
    for key in NAMES:
        assert OBJECTIVES.get(key).name == key


def test_one_objective_module_alone_fills_the_registry():
    code = ("import mfassl.objectives.dagman as d; from mfassl.objectives.registry import OBJECTIVES as R; "
            "print(','.join(R.names()), R.get('dagman') is d.DAGMaN)")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [",".join(NAMES), "True"]


def test_create_objective_builds_the_registered_class():
    obj = create_objective("mae", tiny_backbone(2), decoder_dim=48, decoder_heads=4, decoder_depth=1)
    assert type(obj) is OBJECTIVES.get("mae") and obj.mask_ratio == 0.75
