"""MFA-Swin: MONAI's SwinTransformer with Mirror-Fusion Attention after a chosen stage.

The encoder is held as ``self.swinViT``, the attribute name MONAI's ``SwinUNETR`` uses, so a pretrained
MFA-Swin state dict loads into a ``SwinUNETR`` encoder with matching keys. Swin cannot drop tokens:
masked-image objectives replace hidden patches by a learned mask token (``token_masking = "replace"``).

``torch.jit.script`` compiles the plain encoder forward: the MONAI Swin modules of ``swinViT`` get their
scriptable subclasses (:func:`mfassl.backbones.swin_script.make_swin_scriptable`: same parameters, same state
dict, same outputs), and the code below is typed for TorchScript. That is what ``ckpt_export`` of the BraTS
bundle's ``swin.json`` variant runs, without ``--use_trace``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import SwinTransformer
from monai.utils import ensure_tuple_rep

from mfassl.backbones.base import MFABackbone
from mfassl.backbones.swin_script import make_swin_scriptable
from mfassl.mfa import MirrorFusionAttention

__all__ = ["MFASwin"]


class MFASwin(MFABackbone):
    """Swin Transformer (MONAI) with an MFA block after stage ``mfa_stage``.

    Args:
        spatial_dims: 2 or 3.
        in_chans: input channels (4 for the BraTS modalities).
        embed_dim: width after the patch embedding (``feature_size`` of ``SwinUNETR``); stage ``s``
            has width ``embed_dim * 2**s``.
        depths: blocks per stage (4 stages).
        num_heads: heads per stage.
        window_size: attention window (int or one per dim).
        patch_size: patch-embedding stride (int).
        mfa_stage: MFA sits after this stage's output (0 = right after the patch embedding, 1..4).
        mfa_heads: heads of the MFA block (default: that stage's ``num_heads``, or the first).
        drop_path_rate: stochastic depth.
        use_v2: MONAI's SwinUNETR-v2 residual conv blocks.
        mfa_kwargs: extra :class:`~mfassl.mfa.MirrorFusionAttention` arguments.

    Examples::

        >>> net = MFASwin(3, in_chans=4, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4)
        >>> net(torch.randn(1, 4, 64, 64, 64)).shape
        torch.Size([1, 192])
    """

    token_masking = "replace"

    def __init__(self, spatial_dims: int = 3, in_chans: int = 4, embed_dim: int = 48,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int | Sequence[int] = 7, patch_size: int = 2, mfa_stage: int = 2,
                 mfa_heads: int | None = None, drop_path_rate: float = 0.0, use_v2: bool = False,
                 **mfa_kwargs) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError("depths and num_heads need 4 entries (one per stage).")
        if not 0 <= mfa_stage <= 4:
            raise ValueError(f"mfa_stage must lie in [0, 4], got {mfa_stage}.")
        self.spatial_dims, self.in_chans = spatial_dims, in_chans
        self.trace_refusal = ("MFASwin cannot be exported with torch.jit.trace (ckpt_export --use_trace): a trace keeps "
                              "the window padding and shifts of its example size and fails on other sizes. Export by "
                              "scripting (ckpt_export without --use_trace): the module takes any size.")
        self.swinViT = SwinTransformer(
            in_chans=in_chans, embed_dim=embed_dim, window_size=ensure_tuple_rep(window_size, spatial_dims),
            patch_size=ensure_tuple_rep(patch_size, spatial_dims), depths=depths, num_heads=num_heads,
            drop_path_rate=drop_path_rate, spatial_dims=spatial_dims, use_v2=use_v2)
        make_swin_scriptable(self.swinViT)
        self.use_v2 = use_v2
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.mfa_stage = mfa_stage
        self.base_dim = embed_dim
        self.mfa_dim = embed_dim * 2 ** mfa_stage
        self.embed_dim = embed_dim * 16
        self.patch_size = (patch_size,) * spatial_dims
        self.mfa_patch_size = (patch_size * 2 ** mfa_stage,) * spatial_dims
        self.out_patch_size = (patch_size * 16,) * spatial_dims
        heads = mfa_heads or (num_heads[mfa_stage - 1] if mfa_stage > 0 else num_heads[0])
        self.mfa = MirrorFusionAttention(self.mfa_dim, num_heads=heads, **mfa_kwargs)

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage ``i`` (1..4) on a channel-first map."""
        return self.swinViT.stage(i, x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` images -> ``(B, N, embed_dim)`` patch tokens (patch embedding, dropout; no prefix tokens)."""
        return self.swinViT.embed(x).flatten(2).transpose(1, 2)

    def _stem(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.swinViT.patch_embed(x)  # (B, C, *g)
        if token_mask is not None:
            grid = [h.shape[2 + i] for i in range(self.spatial_dims)]
            n = h.flatten(2).shape[2]  # prod(grid) (TorchScript has no math.prod)
            if token_mask.dim() != 2 or token_mask.shape[0] != h.shape[0] or token_mask.shape[1] != n:
                raise ValueError(f"token_mask must be (B, N) over the {grid} patch grid, got {list(token_mask.shape)}.")
            m = token_mask.view([h.shape[0], 1] + grid).to(h.dtype)
            tok = self.mask_token.view([1, -1] + [1] * self.spatial_dims).to(h.dtype)
            h = h * (1 - m) + tok * m
        ctx: dict[str, torch.Tensor] = {}
        return self.swinViT.pos_drop(h), ctx

    def _refuse_block_fn(self, block_fn: Any) -> None:
        if not torch.jit.is_scripting():
            if block_fn is not None:
                raise NotImplementedError("MFASwin runs its blocks inside its Swin stages (windows, shifts and "
                                          "their masks): a block_fn applies to MFAViT's blocks only.")

    def _pre(self, h: torch.Tensor, ctx: dict[str, torch.Tensor], block_fn: Any = None) -> torch.Tensor:
        self._refuse_block_fn(block_fn)
        for i in range(1, self.mfa_stage + 1):
            h = self._stage(i, h)
        return h

    def _post(self, h: torch.Tensor, ctx: dict[str, torch.Tensor], block_fn: Any = None) -> torch.Tensor:
        self._refuse_block_fn(block_fn)
        for i in range(self.mfa_stage + 1, 5):
            h = self._stage(i, h)
        h = self.swinViT.proj_out(h, normalize=True)
        return h.flatten(2).transpose(1, 2)

    def _split(self, h: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        return h.flatten(2).transpose(1, 2)

    def _merge(self, h: torch.Tensor, tokens: torch.Tensor, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(h.shape)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean of the final tokens ``(B, 16 * embed_dim)``."""
        return tokens.mean(1)

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def stage_features(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The five normalised channel-first maps MONAI's ``SwinTransformer.forward`` returns."""
        h, _ = self._stem(x, token_mask)
        outs = [self.swinViT.proj_out(h, normalize=True)]
        for i in range(1, 5):
            h = self._stage(i, h)
            outs.append(self.swinViT.proj_out(h, normalize=True))
        return outs
