"""MAE: masked patches, pixel reconstruction (He et al., 2022); SimMIM-style on Swin.

On a ViT (``token_masking == "drop"``) the encoder sees only the visible tokens and a small transformer
decoder fills in the hidden ones. On Swin (``"replace"``), hidden patches become a learned mask token at
the input and a linear head predicts the pixels of each final-stage cell (masks are drawn at that cell
size). On a mirror pair both halves share one mask, so token ``i`` is visible on both sides.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from mfassl.backbones import MFABackbone
from mfassl.objectives.base import BaseObjective, PairResult, ViewSpec, patchify, random_token_mask
from mfassl.objectives.registry import OBJECTIVES

__all__ = ["MAEDecoder", "MAE", "reconstruction_loss", "upsample_token_mask"]


def upsample_token_mask(mask: torch.Tensor, coarse_grid: Sequence[int], factor: Sequence[int]) -> torch.Tensor:
    """Repeat a ``(B, prod(coarse_grid))`` mask ``factor`` times along each grid dim, row-major out."""
    m = mask.view(mask.shape[0], *coarse_grid)
    for d, f in enumerate(factor):
        m = m.repeat_interleave(int(f), dim=d + 1)
    return m.flatten(1)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """MSE over hidden patches.

    Args:
        pred: ``(B, N, P)`` predicted patch pixels.
        target: ``(B, N, P)`` true patch pixels.
        mask: ``(B, N)`` bool, True for hidden patches (the ones scored).
        norm_pix: normalise each target patch to zero mean, unit variance first.
    """
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(-1)
    w = mask.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp(min=1.0)


class MAEDecoder(nn.Module):
    """MAE decoder: embed visible tokens, insert mask tokens, sin-cos positions, blocks, pixel head.

    Args:
        in_dim: encoder width.
        out_dim: pixels per patch (``prod(patch) * channels``).
        spatial_dims: 2 or 3.
        dim: decoder width.
        depth: decoder blocks.
        num_heads: decoder heads.
    """

    def __init__(self, in_dim: int, out_dim: int, spatial_dims: int, dim: int = 192, depth: int = 2,
                 num_heads: int = 8) -> None:
        super().__init__()
        unit = 4 if spatial_dims == 2 else 6
        if dim % unit:
            raise ValueError(f"decoder dim must be divisible by {unit} for {spatial_dims}D sin-cos positions, got {dim}.")
        self.spatial_dims, self.dim = spatial_dims, dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, out_dim)
        self._pos: dict[tuple[int, ...], torch.Tensor] = {}

    def _pos_embed(self, grid: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = tuple(int(g) for g in grid)
        if key not in self._pos:
            from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

            self._pos[key] = build_sincos_position_embedding(list(key), self.dim, self.spatial_dims).data.detach()
        return self._pos[key].to(device=device, dtype=dtype)

    def forward(self, visible: torch.Tensor, token_mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """``visible`` ``(B, K, C)`` patch tokens, ``token_mask`` ``(B, N)`` (True hidden) -> ``(B, N, out_dim)``."""
        b, n = token_mask.shape
        x = self.embed(visible)
        full = self.mask_token.to(x.dtype).expand(b, n, -1).clone()
        full[~token_mask] = x.reshape(-1, self.dim)
        full = full + self._pos_embed(grid, full.device, full.dtype)
        return self.pred(self.norm(self.blocks(full)))


@OBJECTIVES.register("mae")
class MAE(BaseObjective):
    """Masked autoencoding on an MFA backbone (ViT: MAE; Swin: SimMIM-style).

    Args:
        backbone: the encoder.
        mask_ratio: share of hidden patches (0.75).
        decoder_dim: decoder width (ViT path).
        decoder_depth: decoder blocks (ViT path).
        decoder_heads: decoder heads (ViT path).
        norm_pix_loss: normalise target patches.
    """

    name = "mae"
    views = ViewSpec(1, 0)
    momentum = None

    def __init__(self, backbone: MFABackbone, mask_ratio: float = 0.75, decoder_dim: int = 192,
                 decoder_depth: int = 2, decoder_heads: int = 8, norm_pix_loss: bool = True) -> None:
        super().__init__(backbone)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}.")
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.drop = backbone.token_masking == "drop"
        unit = backbone.patch_size if self.drop else backbone.out_patch_size
        self.unit = tuple(unit)
        out_dim = math.prod(unit) * backbone.in_chans
        if self.drop:
            self.decoder: nn.Module = MAEDecoder(backbone.embed_dim, out_dim, backbone.spatial_dims, decoder_dim,
                                                 decoder_depth, decoder_heads)
        else:
            self.decoder = nn.Linear(backbone.embed_dim, out_dim)

    def draw_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random masks for ``(B, C, *S)`` inputs.

        Returns:
            ``(score_mask, token_mask)``: ``(B, N_unit)`` hidden cells at the reconstruction unit, and
            the ``(B, N)`` mask over the backbone's input token grid (equal for a ViT).
        """
        grid = [s // u for s, u in zip(x.shape[2:], self.unit)]
        score = random_token_mask(x.shape[0], math.prod(grid), self.mask_ratio, device=x.device)
        if self.drop:
            return score, score
        factor = [u // p for u, p in zip(self.unit, self.backbone.patch_size)]
        return score, upsample_token_mask(score, grid, factor)

    def _reconstruct(self, x: torch.Tensor, tokens: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        grid = [s // u for s, u in zip(x.shape[2:], self.unit)]
        if self.drop:
            pred = self.decoder(self.backbone.patch_tokens(tokens), score, grid)
        else:
            pred = self.decoder(tokens)
        return reconstruction_loss(pred, patchify(x, self.unit), score, self.norm_pix_loss)

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_views(views)
        x = views[0]
        score, tmask = self.draw_mask(x)
        tokens = self.backbone.forward_features(x, token_mask=tmask)
        return {"loss": self._reconstruct(x, tokens, score)}

    def forward_pair(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float = 1.0, use_mfa: bool = True,
                     key_mask: torch.Tensor | None = None) -> PairResult:
        score, tmask = self.draw_mask(x_l)  # one mask for both halves
        paired = self.backbone.forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask,
                                              token_mask=tmask)
        loss = 0.5 * (self._reconstruct(x_l, paired.out_l, score) + self._reconstruct(x_r, paired.out_r, score))
        return PairResult({"loss": loss}, paired, tmask if self.drop else None)
