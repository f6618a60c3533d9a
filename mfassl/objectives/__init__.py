"""Base self-supervised objectives behind one interface, selected by name.

``create_objective(name, backbone, **kwargs)``; names: ``dino`` (default), ``mocov3``, ``mae``, and the
related methods ``dagman`` (MFA-Swin) and ``mixedae`` (2D MFA-ViT). Each class registers itself in
:data:`OBJECTIVES` (:mod:`mfassl.objectives.registry`) where it is defined; the imports below load them all.
"""

from __future__ import annotations

from mfassl.objectives.base import (
    GLOBAL_FEATURES,
    BaseObjective,
    PairResult,
    ViewSpec,
    patchify,
    random_token_mask,
    unpatchify,
    update_momentum,
)
from mfassl.objectives.dagman import DAGMaN
from mfassl.objectives.dino import DINO, DINOLoss
from mfassl.objectives.mae import MAE
from mfassl.objectives.mixedae import MixedAE
from mfassl.objectives.mocov3 import InfoNCELoss, MoCoV3
from mfassl.objectives.registry import OBJECTIVES, create_objective

__all__ = [
    "GLOBAL_FEATURES",
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
    "DAGMaN",
    "MixedAE",
    "patchify",
    "unpatchify",
    "random_token_mask",
    "update_momentum",
]
