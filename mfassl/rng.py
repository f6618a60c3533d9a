"""Random draws that ``torch.compile`` can trace for a symbolic batch size.

``torch.rand(B, generator=None)`` goes through the generator overload, which needs concrete sizes: a compiled
forward that recompiles for a partial last batch (a dynamic batch size) stopped there. These draws pass the
``generator`` keyword only when a generator is given.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["rand", "randn"]


def _draw(fn: Callable[..., torch.Tensor], size: Sequence[Any], generator: torch.Generator | None,
          **kwargs: Any) -> torch.Tensor:
    return fn(*size, **kwargs) if generator is None else fn(*size, generator=generator, **kwargs)


def rand(*size: Any, generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
    """``torch.rand(*size, **kwargs)``, with ``generator`` only when one is given: uniform in ``[0, 1)``."""
    return _draw(torch.rand, size, generator, **kwargs)


def randn(*size: Any, generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
    """``torch.randn(*size, **kwargs)``, with ``generator`` only when one is given: standard normal."""
    return _draw(torch.randn, size, generator, **kwargs)
