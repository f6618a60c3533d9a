"""The objective registry: every objective registers where it is defined, under its own ``name``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


_FRESH = """
import json, sys
import mfassl.objectives.dagman as d
from mfassl.objectives.registry import OBJECTIVES as R
out = {"names": R.names(), "dagman_is_the_class": R.get("dagman") is d.DAGMaN}
import mfassl.engine, mfassl.export, mfassl.method
from mfassl.backbones import create_backbone
from mfassl.method import MFASSL
vit = create_backbone("mfa_vit", img_size=16, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2)
MFASSL(vit, "mocov3", dict(proj_hidden_dim=32, out_dim=16, pred_hidden_dim=32))
out["monai_after_a_2d_vit_run_is_built"] = "monai" in sys.modules
create_backbone("mfa_swin", spatial_dims=2, in_chans=1, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                window_size=4)
out["monai_after_a_swin_is_built"] = "monai" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh_interpreter() -> dict:
    """What a new interpreter has after importing one objective module, then building a 2D ViT MFASSL and an
    MFA-Swin (one child process for both tests)."""
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _FRESH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_objective_module_alone_fills_the_registry(fresh_interpreter):
    assert fresh_interpreter["names"] == NAMES and fresh_interpreter["dagman_is_the_class"]


def test_a_2d_vit_run_does_not_import_monai_until_a_swin_is_built(fresh_interpreter):
    """MONAI (seconds to import) is loaded where a 3D ViT, an MFA-Swin or DAGMaN is built, not by the core's
    modules: a 2D run, a torchrun rank or a command's start-up does not pay for it."""
    assert fresh_interpreter["monai_after_a_2d_vit_run_is_built"] is False
    assert fresh_interpreter["monai_after_a_swin_is_built"] is True


def test_create_objective_builds_the_registered_class():
    obj = create_objective("mae", tiny_backbone(2), decoder_dim=48, decoder_heads=4, decoder_depth=1)
    assert type(obj) is OBJECTIVES.get("mae") and obj.mask_ratio == 0.75
