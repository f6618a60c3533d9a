"""The registry of base objectives: :data:`OBJECTIVES` and :func:`create_objective`.

Each objective module registers its class where the class is defined
(``@OBJECTIVES.register("dino")``); :mod:`mfassl.objectives` imports every objective module, so importing
the package (or any module in it) fills the registry. This module imports no objective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mfassl.registry import Registry

if TYPE_CHECKING:
    from mfassl.backbones import MFABackbone
    from mfassl.objectives.base import BaseObjective

__all__ = ["OBJECTIVES", "create_objective"]

OBJECTIVES: Registry[BaseObjective] = Registry("objective")


def create_objective(name: str, backbone: MFABackbone, **kwargs: Any) -> BaseObjective:
    """Build the objective registered under ``name`` on ``backbone``.

    Args:
        name: a registered name (``OBJECTIVES.names()``: ``dagman``, ``dino``, ``mae``, ``mixedae``, ``mocov3``).
        backbone: the student backbone.
        kwargs: the objective's own arguments.
    """
    return OBJECTIVES.create(name, backbone=backbone, **kwargs)
