"""Heads on an MFA encoder: landmark regression (linear or heatmap) and the attribute probe.

Coordinates predicted by the heads are *normalised* pixel ``(x, y)`` in ``[0, 1]`` of the input
crop (``0`` = first pixel centre, ``1`` = last); :class:`LandmarkModel` scales them to pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mfassl.backbones import MFABackbone
from mfassl.registry import Registry

__all__ = ["LANDMARK_HEADS", "LinearLandmarkHead", "HeatmapLandmarkHead", "LandmarkModel", "AttributeProbe",
           "soft_argmax_2d"]

LANDMARK_HEADS: Registry[nn.Module] = Registry("landmark head")


@LANDMARK_HEADS.register("linear")
class LinearLandmarkHead(nn.Module):
    """Linear regression of ``N`` landmarks from the pooled feature.

    Args:
        embed_dim: feature width ``C``.
        n_points: ``N``.
        grid: unused (same signature as the heatmap head).

    ``forward(features (B, C), tokens (B, T, C))`` -> ``(B, N, 2)`` normalised ``(x, y)``.
    """

    uses_tokens = False

    def __init__(self, embed_dim: int, n_points: int, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.n_points = n_points
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, 2 * n_points)
        nn.init.zeros_(self.fc.weight)
        nn.init.constant_(self.fc.bias, 0.5)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.norm(features)).view(-1, self.n_points, 2)


def soft_argmax_2d(heatmaps: torch.Tensor) -> torch.Tensor:
    """``(B, N, h, w)`` logits -> ``(B, N, 2)`` expected normalised ``(x, y)`` under the softmax."""
    b, n, h, w = heatmaps.shape
    prob = heatmaps.flatten(2).softmax(-1).view(b, n, h, w)
    xs = torch.linspace(0.0, 1.0, w, device=heatmaps.device, dtype=prob.dtype)
    ys = torch.linspace(0.0, 1.0, h, device=heatmaps.device, dtype=prob.dtype)
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


@LANDMARK_HEADS.register("heatmap")
class HeatmapLandmarkHead(nn.Module):
    """Heatmaps from the patch-token grid (1x1 conv, upsampling, 3x3 conv) and a soft-argmax.

    Args:
        embed_dim: token width ``C``.
        n_points: ``N``.
        grid: patch grid ``(h, w)``.
        upsample: heatmap resolution factor over the grid.
        hidden: width of the upsampled feature map.

    ``forward(features (B, C), tokens (B, h*w, C))`` -> ``(B, N, 2)`` normalised ``(x, y)``.
    """

    uses_tokens = True

    def __init__(self, embed_dim: int, n_points: int, grid: tuple[int, int] | None = None, upsample: int = 4,
                 hidden: int = 64) -> None:
        super().__init__()
        if grid is None:
            raise ValueError("the heatmap head needs the patch grid (h, w).")
        self.grid = tuple(grid)
        self.upsample = upsample
        self.proj = nn.Conv2d(embed_dim, hidden, 1)
        self.out = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, n_points, 1))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        if tokens is None:
            raise ValueError("the heatmap head needs the patch tokens.")
        b, t, c = tokens.shape
        h, w = self.grid
        x = self.proj(tokens.transpose(1, 2).reshape(b, c, h, w))
        x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return soft_argmax_2d(self.out(x))


class LandmarkModel(nn.Module):
    """An encoder with a landmark head.

    Args:
        backbone: an MFA backbone (its plain ``forward_features`` is used; no mirror pair, no MFA).
        head: ``linear`` or ``heatmap`` (from :data:`LANDMARK_HEADS`).
        n_points: landmarks per face.
        img_size: input side ``S`` in pixels.
        finetune: train the encoder too (False keeps it frozen, in eval mode).
        head_kwargs: extra head arguments.

    ``forward(images (B, 3, S, S))`` -> ``(B, N, 2)`` pixel ``(x, y)`` in the input.
    """

    def __init__(self, backbone: MFABackbone, head: str, n_points: int, img_size: int, finetune: bool = False,
                 head_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.img_size = int(img_size)
        self.finetune = bool(finetune)
        grid = backbone.grid_shape((img_size, img_size))
        self.head = LANDMARK_HEADS.create(head, embed_dim=backbone.embed_dim, n_points=n_points, grid=grid,
                                          **(head_kwargs or {}))
        if not finetune:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "LandmarkModel":
        super().train(mode)
        if not self.finetune:
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            tokens = self.backbone.forward_features(images)
            feats = self.backbone.pool(tokens)
            patches = self.backbone.patch_tokens(tokens) if hasattr(self.backbone, "patch_tokens") else tokens
        return self.head(feats, patches) * (self.img_size - 1)


class AttributeProbe(nn.Module):
    """Linear probe for binary attributes: ``(B, C)`` features -> ``(B, A)`` logits."""

    def __init__(self, embed_dim: int, n_attributes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(embed_dim, affine=False)
        self.fc = nn.Linear(embed_dim, n_attributes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(features))
