"""Base self-supervised objectives behind one interface, selected by name.

``create_objective(name, backbone, **kwargs)``; names: ``dino`` (default), ``mocov3``, ``mae``, and the
related methods registered by their modules (``dagman``, ``mixedae``) when present.
"""

from __future__ import annotations

import importlib
from typing import Any

from mfassl.backbones import MFABackbone
from mfassl.objectives.base import BaseObjective, PairResult, ViewSpec, patchify, random_token_mask, update_momentum
from mfassl.objectives.dino import DINO, DINOLoss
from mfassl.objectives.mae import MAE
from mfassl.objectives.mocov3 import InfoNCELoss, MoCoV3
from mfassl.registry import Registry

__all__ = [
    "OBJECTIVES",
    "create_objective",
    "BaseObjective",
    "PairResult",
    "ViewSpec",
    "DINO",
    "DINOLoss",
    "MoCoV3",
    "InfoNCELoss",
    "MAE",
    "patchify",
    "random_token_mask",
    "update_momentum",
]

OBJECTIVES: Registry[BaseObjective] = Registry("objective")
OBJECTIVES.register("dino", DINO)
OBJECTIVES.register("mocov3", MoCoV3)
OBJECTIVES.register("mae", MAE)

# Related objectives live in their own modules and register themselves on import.
for _module in ("mfassl.objectives.dagman", "mfassl.objectives.mixedae"):
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as err:  # pragma: no cover - only while a module is absent
        if err.name != _module:
            raise


def create_objective(name: str, backbone: MFABackbone, **kwargs: Any) -> BaseObjective:
    """Build the objective registered under ``name`` on ``backbone``."""
    return OBJECTIVES.create(name, backbone=backbone, **kwargs)
