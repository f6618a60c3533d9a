"""Projection and prediction heads of the objectives (built from ``(in, out, norm, act)`` blocks)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ProjectionHead", "DINOHead", "MoCoProjectionHead", "MoCoPredictionHead", "NormalizedLinear"]


class ProjectionHead(nn.Module):
    """A stack of ``Linear`` layers given as ``(in, out, norm or None, act or None)`` tuples.

    Args:
        blocks: the layers, in order.
    """

    def __init__(self, blocks: Sequence[tuple[int, int, nn.Module | None, nn.Module | None]]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out, norm, act in blocks:
            layers.append(nn.Linear(fan_in, fan_out, bias=norm is None))
            if norm is not None:
                layers.append(norm)
            if act is not None:
                layers.append(act)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in)`` -> ``(B, out)``."""
        return self.layers(x)


class NormalizedLinear(nn.Module):
    """Bias-free linear layer whose weight rows are L2-normalised (DINO's ``norm_last_layer``).

    ``x @ normalize(W).T`` is computed as ``(x @ W.T) / ||W_k||``: the same numbers without materialising a
    normalised copy of the ``(out, in)`` weight (16.7M values for DINO's 65536 x 256) in every call and in
    its backward pass.
    """

    eps = 1e-12  # as F.normalize

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in)`` -> ``(B, out)``."""
        return F.linear(x, self.weight) / torch.linalg.vector_norm(self.weight, dim=1).clamp_min(self.eps)


class DINOHead(nn.Module):
    """DINO head: 3-layer MLP (GELU) to a bottleneck, L2 normalisation, then a normalised linear layer.

    Args:
        in_dim: backbone feature width.
        hidden_dim: MLP width (2048 published).
        bottleneck_dim: bottleneck width (256 published).
        out_dim: prototypes (65536 published).
        batch_norm: BatchNorm after the two hidden layers (DINO's ``use_bn_in_head``; off for ViTs in the
            paper). It rescales the small differences between images of an encoder at initialisation, which
            small models and data sets need to leave the uniform teacher (bench/RESULTS.md, reflection).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int = 65536,
                 batch_norm: bool = False) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(hidden_dim)) if batch_norm else (lambda: None)
        self.mlp = ProjectionHead([
            (in_dim, hidden_dim, norm(), nn.GELU()),
            (hidden_dim, hidden_dim, norm(), nn.GELU()),
            (hidden_dim, bottleneck_dim, None, None),
        ])
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` -> ``(B, out_dim)`` logits."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MoCoProjectionHead(ProjectionHead):
    """MoCo-v3 projector: ``num_layers`` Linear+BN(+ReLU) layers, the last BN without affine."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 3) -> None:
        blocks = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i in range(num_layers):
            last = i == num_layers - 1
            norm = nn.BatchNorm1d(dims[i + 1], affine=not last)
            blocks.append((dims[i], dims[i + 1], norm, None if last else nn.ReLU()))
        super().__init__(blocks)


class MoCoPredictionHead(MoCoProjectionHead):
    """MoCo-v3 predictor (2 layers by default)."""

    def __init__(self, in_dim: int = 256, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 2) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers)
