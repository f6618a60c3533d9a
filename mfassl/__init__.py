"""MFASSL shared core: reflection-aware self-supervised learning for approximately bilateral images.

The core is pure PyTorch (with timm and MONAI networks) and knows nothing of hospitals or faces:
symmetry geometry, mirror pairs, Mirror-Fusion Attention, MFA backbones, the symmetry losses, the
base objectives, the :class:`MFASSL` method and the ignite training engine.

The names below are imported on first use (``from mfassl import MFASSL`` works as usual), so that
``import mfassl`` stays fast for command lines that need only a part of it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BACKBONES": "mfassl.backbones",
    "MFABackbone": "mfassl.backbones",
    "MFASwin": "mfassl.backbones",
    "MFAViT": "mfassl.backbones",
    "PairedOutput": "mfassl.backbones",
    "create_backbone": "mfassl.backbones",
    "DataError": "mfassl.errors",
    "SymmetryAxis2D": "mfassl.geometry",
    "SymmetryHyperplane": "mfassl.geometry",
    "SymmetryPlane3D": "mfassl.geometry",
    "ReflectionConsistencyLoss": "mfassl.losses",
    "TokenAlignmentLoss": "mfassl.losses",
    "MFAOutput": "mfassl.mfa",
    "MirrorFusionAttention": "mfassl.mfa",
    "MFASSL": "mfassl.method",
    "OBJECTIVES": "mfassl.objectives",
    "BaseObjective": "mfassl.objectives",
    "create_objective": "mfassl.objectives",
    "MirrorPair": "mfassl.pairing",
    "mirror_pair": "mfassl.pairing",
    "SymmetrySchedule": "mfassl.schedules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mfassl' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
