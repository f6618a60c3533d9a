"""MFASSL shared core: reflection-aware self-supervised learning for approximately bilateral images.

The core is pure PyTorch (with timm and MONAI networks) and knows nothing of hospitals or faces:
symmetry geometry, mirror pairs, Mirror-Fusion Attention, MFA backbones, the symmetry losses, the
base objectives, the :class:`MFASSL` method and the ignite training engine.
"""

from mfassl.backbones import BACKBONES, MFABackbone, MFASwin, MFAViT, PairedOutput, create_backbone
from mfassl.geometry import SymmetryAxis2D, SymmetryHyperplane, SymmetryPlane3D
from mfassl.losses import ReflectionConsistencyLoss, TokenAlignmentLoss
from mfassl.mfa import MFAOutput, MirrorFusionAttention
from mfassl.method import MFASSL
from mfassl.objectives import OBJECTIVES, BaseObjective, create_objective
from mfassl.pairing import MirrorPair, mirror_pair
from mfassl.schedules import SymmetrySchedule

__version__ = "0.1.0"

__all__ = [
    "MFASSL",
    "OBJECTIVES",
    "BaseObjective",
    "create_objective",
    "SymmetrySchedule",
    "BACKBONES",
    "MFABackbone",
    "MFASwin",
    "MFAViT",
    "PairedOutput",
    "create_backbone",
    "SymmetryAxis2D",
    "SymmetryHyperplane",
    "SymmetryPlane3D",
    "ReflectionConsistencyLoss",
    "TokenAlignmentLoss",
    "MFAOutput",
    "MirrorFusionAttention",
    "MirrorPair",
    "mirror_pair",
]
