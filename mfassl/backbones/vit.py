"""MFA-ViT: a Vision Transformer with Mirror-Fusion Attention after block ``l``.

2D uses timm's ``VisionTransformer`` (``vit_small_patch16_224``, ``vit_base_patch16_224`` or explicit
sizes; always ``pretrained=False``); 3D uses MONAI's ``ViT`` with a class token added. Both take
inputs of other sizes than ``img_size`` (DINO's local crops): the position embedding is
interpolated.
"""

from __future__ import annotations

from typing import Any, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from mfassl.backbones.base import MFABackbone, default_mfa_layer
from mfassl.mfa import MirrorFusionAttention

__all__ = ["MFAViT"]


class MFAViT(MFABackbone):
    """Vision Transformer with an MFA block between blocks ``l`` and ``l+1``.

    Args:
        spatial_dims: 2 (timm ViT) or 3 (MONAI ViT).
        img_size: nominal input size (int or one per dim); sets the position-embedding grid.
        patch_size: patch size (int, isotropic).
        in_chans: input channels.
        embed_dim: token width ``C``.
        depth: number of transformer blocks ``L``.
        num_heads: attention heads of the encoder blocks.
        mlp_ratio: MLP width over ``C``.
        mfa_layer: ``l``, the block after which MFA sits (default 8 of 12, scaled to ``depth``).
        mfa_heads: heads of the MFA block (default ``num_heads``).
        drop_path_rate: stochastic depth of the 2D encoder.
        timm_name: build the 2D encoder from this timm model name instead of the explicit sizes
            (e.g. ``"vit_base_patch16_224"``); never pretrained.
        mfa_kwargs: extra arguments of :class:`~mfassl.mfa.MirrorFusionAttention` (inits, eps).

    Examples::

        >>> net2d = MFAViT(2, img_size=64, patch_size=16, in_chans=1, embed_dim=64, depth=4, num_heads=4)
        >>> net2d(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 64])
        >>> net3d = MFAViT(3, img_size=32, patch_size=8, in_chans=4, embed_dim=48, depth=3, num_heads=4)
        >>> net3d.forward_paired(torch.randn(1, 4, 32, 32, 32), torch.randn(1, 4, 32, 32, 32)).pre_l.shape
        torch.Size([1, 64, 48])
    """

    # constants for TorchScript: the 2D/3D branches and the block slices are resolved when scripting
    __constants__ = ["is_2d", "mfa_layer", "num_prefix_tokens"]
    # Python-side shortcuts to the encoder's parts; not registered twice, so every tensor has one state-dict key
    __jit_unused_properties__ = ["blocks", "norm"]

    @property
    def blocks(self) -> nn.ModuleList | nn.Sequential:
        """The encoder's transformer blocks (``encoder.blocks``)."""
        return self.encoder.blocks

    @property
    def norm(self) -> nn.Module:
        """The encoder's final norm (``encoder.norm``)."""
        return self.encoder.norm

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # files written while ``blocks``/``norm`` were registered aliases hold each tensor twice: keep the
        # ``encoder.`` copy (or rename the alias when only it is there)
        for alias in ("blocks.", "norm."):
            for key in [k for k in state_dict if k.startswith(prefix + alias)]:
                canonical = prefix + "encoder." + key[len(prefix):]
                value = state_dict.pop(key)
                state_dict.setdefault(canonical, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __init__(self, spatial_dims: int = 2, img_size: int | Sequence[int] = 224, patch_size: int = 16,
                 in_chans: int = 1, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, mfa_layer: int | None = None, mfa_heads: int | None = None,
                 drop_path_rate: float = 0.0, timm_name: str | None = None, **mfa_kwargs) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.is_2d = spatial_dims == 2
        # timm's dynamic position-embedding resampling reads the size as Python numbers, which a trace freezes
        self.trace_refusal = "" if spatial_dims == 3 else (
            "the 2D MFA-ViT cannot be exported with torch.jit.trace (ckpt_export --use_trace): the trace keeps the "
            "position-embedding grid of its example size and fails on other sizes. Export by scripting (ckpt_export "
            "without --use_trace): the module takes any size.")
        self.in_chans = in_chans
        if spatial_dims == 2:
            if timm_name is not None:
                enc = timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=in_chans,
                                        img_size=img_size, dynamic_img_size=True, drop_path_rate=drop_path_rate)
            else:
                enc = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                        qkv_bias=True, drop_path_rate=drop_path_rate, dynamic_img_size=True)
            self.encoder = enc
            embed_dim, depth = enc.embed_dim, len(enc.blocks)
            num_heads = enc.blocks[0].attn.num_heads
            patch_size = int(enc.patch_embed.patch_size[0])
            self.num_prefix_tokens = enc.num_prefix_tokens
        else:
            if timm_name is not None:
                raise ValueError("timm_name applies to spatial_dims=2 only.")
            from monai.networks.nets import ViT  # MONAI (seconds to import) only where a 3D ViT is built
            from monai.utils import ensure_tuple_rep

            self.encoder = ViT(in_channels=in_chans, img_size=ensure_tuple_rep(img_size, 3),
                               patch_size=ensure_tuple_rep(patch_size, 3), hidden_size=embed_dim,
                               mlp_dim=int(embed_dim * mlp_ratio), num_layers=depth, num_heads=num_heads,
                               proj_type="conv", classification=False, qkv_bias=True, spatial_dims=3)
            for blk in self.encoder.blocks:  # MONAI's ViT does not pass use_flash_attention on to its blocks
                blk.attn.use_flash_attention = True  # fused scaled_dot_product_attention, same parameters
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            self.num_prefix_tokens = 1
            self._pos_grid = [int(s) // patch_size for s in ensure_tuple_rep(img_size, 3)]
        self.embed_dim = self.mfa_dim = embed_dim
        self.depth = depth
        self.patch_size = self.mfa_patch_size = self.out_patch_size = (patch_size,) * spatial_dims
        self.mfa_layer = default_mfa_layer(depth) if mfa_layer is None else int(mfa_layer)
        if not 0 <= self.mfa_layer <= depth:
            raise ValueError(f"mfa_layer must lie in [0, {depth}], got {mfa_layer}.")
        self.mfa = MirrorFusionAttention(embed_dim, num_heads=mfa_heads or num_heads, **mfa_kwargs)

    # ---------------------------------------------------------------- hooks
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` images -> ``(B, P + N, C)`` tokens: prefix (class) tokens, then patches, positions added.

        2D follows timm's ``VisionTransformer.forward_features`` up to the blocks; timm has no public method
        for its position-embedding step, so this calls ``VisionTransformer._pos_embed`` (``pyproject.toml`` pins
        timm to the versions ``tests/core/test_timm_private_api.py`` checks). 3D interpolates MONAI's position
        embedding when the grid differs from ``img_size``'s.
        """
        if self.is_2d:
            enc = self.encoder
            return enc.norm_pre(enc.patch_drop(enc._pos_embed(enc.patch_embed(x))))
        pe = self.encoder.patch_embedding
        t = pe.patch_embeddings(x)  # (B, C, g0, g1, g2)
        grid = t.shape[2:]
        t = t.flatten(2).transpose(1, 2)
        pos = pe.position_embeddings
        if grid != self._pos_grid:
            pos = pos.transpose(1, 2).reshape([1, -1] + self._pos_grid)
            pos = F.interpolate(pos, size=grid, mode="trilinear", align_corners=False).flatten(2).transpose(1, 2)
        t = pe.dropout(t + pos)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)

    def _stem(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.embed(x)
        if token_mask is not None:
            p = self.num_prefix_tokens
            patches = h[:, p:]
            if token_mask.shape != patches.shape[:2]:
                raise ValueError(f"token_mask must be (B, N) = {list(patches.shape[:2])}, got {list(token_mask.shape)}.")
            counts = (~token_mask).sum(1)
            if not bool((counts == counts[0]).all()):
                raise ValueError("token_mask must hide the same number of tokens in every row.")
            visible = patches[~token_mask].reshape(h.shape[0], -1, h.shape[-1])
            h = torch.cat([h[:, :p], visible], dim=1)
        return h, {}

    def _stem_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return tokens, {}

    def _blocks(self, h: torch.Tensor, start: int, stop: int, block_fn: Any) -> torch.Tensor:
        """Blocks ``start .. stop - 1`` on ``(B, T, C)`` tokens, each through ``block_fn`` or :meth:`run_block`."""
        for i, blk in enumerate(self.encoder.blocks):  # enumerate, not a slice: TorchScript unrolls it
            if start <= i < stop:
                if torch.jit.is_scripting():  # TorchScript cannot call a Python hook: the block as it is
                    h = blk(h)
                else:
                    h = (self.run_block if block_fn is None else block_fn)(i, blk, h)
        return h

    def _pre(self, h: torch.Tensor, ctx: dict[str, torch.Tensor], block_fn: Any = None) -> torch.Tensor:
        return self._blocks(h, 0, self.mfa_layer, block_fn)

    def _post(self, h: torch.Tensor, ctx: dict[str, torch.Tensor], block_fn: Any = None) -> torch.Tensor:
        return self.encoder.norm(self._blocks(h, self.mfa_layer, self.depth, block_fn))

    def _split(self, h: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        return h[:, self.num_prefix_tokens:]

    def _merge(self, h: torch.Tensor, tokens: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([h[:, : self.num_prefix_tokens], tokens], dim=1)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The class token ``(B, C)``."""
        return tokens[:, 0]

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``(B, N, C)`` patch tokens of final tokens."""
        return tokens[:, self.num_prefix_tokens:]
