"""A MONAI ``SwinUNETR`` that TorchScript can compile, with the same constructor and the same state dict.

MONAI's Swin blocks cannot be scripted with this PyTorch (``torch.utils.checkpoint`` takes ``**kwargs``, the window
helpers take untyped tuples, ``einops.rearrange`` and ``itertools.product`` sit in ``forward``). :class:`SwinUNETR`
builds MONAI's network and then gives each Swin module (patch embedding, window attention, Swin block, stage,
patch merging, the ``swinViT`` encoder) a subclass whose ``forward`` computes the same thing with typed, scriptable
code. Parameters, buffers and their names do not change, so weights of a stock ``monai.networks.nets.SwinUNETR``
load key for key and the outputs agree to float precision (tested, 2D and 3D, with padding and shifted windows).

Only torch and MONAI are imported: MONAI Label's venv loads this file through the bundle folder. That is why the core's
``mfassl/backbones/swin_script.py`` (the same subclasses for the MFA-Swin encoder) is not imported here: this bundle is
self-contained and runs where ``mfassl`` is not installed. ``tests/core/test_swin_script.py`` checks both agree.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.patchembedding import PatchEmbed
from monai.networks.nets import swin_unetr as _swin

__all__ = ["SwinUNETR", "make_swin_scriptable"]


def _window_partition(x: torch.Tensor, ws: List[int]) -> torch.Tensor:
    """``(B, *S, C)`` channel-last map (``S`` divisible by ``ws``) -> ``(B * windows, prod(ws), C)``."""
    c = x.shape[-1]
    if len(ws) == 3:
        b, d, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        x = x.view(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
        return x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, ws[0] * ws[1] * ws[2], c)
    b, h, w = x.shape[0], x.shape[1], x.shape[2]
    x = x.view(b, h // ws[0], ws[0], w // ws[1], ws[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws[0] * ws[1], c)


def _window_reverse(windows: torch.Tensor, ws: List[int], dims: List[int]) -> torch.Tensor:
    """Inverse of :func:`_window_partition`; ``dims`` is ``[B, *S]``; returns ``(B, *S, C)``."""
    if len(dims) == 4:
        b, d, h, w = dims[0], dims[1], dims[2], dims[3]
        x = windows.view(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
        return x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(b, d, h, w, -1)
    b, h, w = dims[0], dims[1], dims[2]
    x = windows.view(b, h // ws[0], w // ws[1], ws[0], ws[1], -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _window_size(size: List[int], window: List[int], shift: List[int]) -> Tuple[List[int], List[int]]:
    """Window and shift per axis: an axis no longer than its window is one window, unshifted (MONAI's rule)."""
    use_w = [int(v) for v in window]
    use_s = [int(v) for v in shift]
    for i in range(len(size)):
        if size[i] <= window[i]:
            use_w[i] = size[i]
            use_s[i] = 0
    return use_w, use_s


def _compute_mask(dims: List[int], ws: List[int], ss: List[int], device: torch.device) -> torch.Tensor:
    """Attention mask ``(windows, N, N)`` of shifted windows: 0 within a region, -100 across regions.

    Along each axis of padded length ``n`` the regions are ``[0, n - ws)``, ``[n - ws, n - ss)`` and
    ``[n - ss, n)``; an unshifted axis is one region. Positions are in one region when they are in one region
    along every axis, the same partition as MONAI's ``compute_mask``.
    """
    label = torch.zeros(dims, device=device)
    for i in range(len(dims)):
        n = dims[i]
        axis = torch.zeros(n, device=device)
        if ss[i] > 0:
            axis[n - ws[i]:n - ss[i]] = 1.0
            axis[n - ss[i]:] = 2.0
        shape = [1] * len(dims)
        shape[i] = n
        label = label * 3.0 + axis.view(shape)
    windows = _window_partition(label.unsqueeze(0).unsqueeze(-1), ws).squeeze(-1)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class _PatchEmbed(PatchEmbed):
    """MONAI ``PatchEmbed`` with a scriptable ``forward``: ``(B, C, *S)`` -> ``(B, embed_dim, *S / patch)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.dim() - 2
        pad: List[int] = []
        for i in range(n - 1, -1, -1):  # F.pad lists the last axis first
            s = x.shape[2 + i]
            p = self.patch_list[i]
            pad += [0, (p - s % p) % p]
        if sum(pad) > 0:
            x = F.pad(x, pad)
        x = self.proj(x)
        if self.norm is not None:
            shape = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2))
            x = x.transpose(1, 2).reshape(shape)
        return x


class _WindowAttention(_swin.WindowAttention):
    """Window attention with relative position bias; ``x`` ``(B * windows, N, C)``, ``mask`` ``(windows, N, N)``.

    Fused: ``F.scaled_dot_product_attention`` with the position bias (plus the shifted-window mask) as its additive
    mask, in training as at inference; the same output as MONAI's explicit softmax to float rounding.
    """

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        h = self.num_heads
        d = c // h
        qkv = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1).to(q.dtype)
        drop = self.attn_drop.p if self.training else 0.0
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), dropout_p=drop,
                                                 scale=self.scale)
        else:
            nw = mask.shape[0]  # windows and heads side by side: one (windows * H, N, N) mask for every image
            bias = (bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)).reshape(1, nw * h, n, n)
            shape = [b // nw, nw * h, n, d]
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=bias,
                                                 dropout_p=drop, scale=self.scale).reshape(b, h, n, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class _SwinTransformerBlock(_swin.SwinTransformerBlock):
    """(Shifted) window attention and MLP on a channel-last map ``(B, *S, C)``."""

    __constants__ = ["use_checkpoint"]

    def forward_part1(self, x: torch.Tensor, mask_matrix: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.norm1(x)
        n = x.dim() - 2
        b, c = x.shape[0], x.shape[-1]
        size = [x.shape[1 + i] for i in range(n)]
        ws, ss = _window_size(size, self.ws, self.ss)
        pad: List[int] = [0, 0]
        for i in range(n - 1, -1, -1):
            pad += [0, (ws[i] - size[i] % ws[i]) % ws[i]]
        padded = sum(pad) > 0
        if padded:
            x = F.pad(x, pad)
        dims = [b] + [x.shape[1 + i] for i in range(n)]
        axes = [1 + i for i in range(n)]
        shifted = max(ss) > 0
        attn_mask: Optional[torch.Tensor] = None
        if shifted:
            x = torch.roll(x, shifts=[-s for s in ss], dims=axes)
            attn_mask = mask_matrix
        windows = self.attn(_window_partition(x, ws), attn_mask)
        x = _window_reverse(windows.view([-1] + ws + [c]), ws, dims)
        if shifted:
            x = torch.roll(x, shifts=ss, dims=axes)
        if padded:
            for i in range(n):
                x = x.narrow(1 + i, 0, size[i])
            x = x.contiguous()
        return x

    def forward(self, x: torch.Tensor, mask_matrix: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.drop_path(self.forward_part1(x, mask_matrix))
        return x + self.forward_part2(x)


class _BasicLayer(_swin.BasicLayer):
    """One Swin stage on a channel-first map ``(B, C, *S)``, patch merging included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.dim() - 2
        b = x.shape[0]
        size = [x.shape[2 + i] for i in range(n)]
        ws, ss = _window_size(size, self.ws, self.ss)
        x = x.permute([0] + [2 + i for i in range(n)] + [1])  # channel last
        dims = [((size[i] + ws[i] - 1) // ws[i]) * ws[i] for i in range(n)]
        attn_mask = _compute_mask(dims, ws, ss, x.device)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        x = x.view([b] + size + [-1])
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute([0, n + 1] + [1 + i for i in range(n)])


class _PatchMerging(_swin.PatchMergingV2):
    """``(B, *S, C)`` -> ``(B, *S / 2, 2C)``: the 2^d neighbours concatenated (MONAI's order), normalised, reduced."""

    __constants__ = ["v1"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            d, h, w = x.shape[1], x.shape[2], x.shape[3]
            if d % 2 == 1 or h % 2 == 1 or w % 2 == 1:
                x = F.pad(x, [0, 0, 0, w % 2, 0, h % 2, 0, d % 2])
            if self.v1:  # PatchMerging
                parts = [x[:, 0::2, 0::2, 0::2, :], x[:, 1::2, 0::2, 0::2, :], x[:, 0::2, 1::2, 0::2, :],
                         x[:, 0::2, 0::2, 1::2, :], x[:, 1::2, 1::2, 0::2, :], x[:, 1::2, 0::2, 1::2, :],
                         x[:, 0::2, 1::2, 1::2, :], x[:, 1::2, 1::2, 1::2, :]]
            else:  # PatchMergingV2: itertools.product order
                parts = [x[:, 0::2, 0::2, 0::2, :], x[:, 0::2, 0::2, 1::2, :], x[:, 0::2, 1::2, 0::2, :],
                         x[:, 0::2, 1::2, 1::2, :], x[:, 1::2, 0::2, 0::2, :], x[:, 1::2, 0::2, 1::2, :],
                         x[:, 1::2, 1::2, 0::2, :], x[:, 1::2, 1::2, 1::2, :]]
        else:
            h, w = x.shape[1], x.shape[2]
            if h % 2 == 1 or w % 2 == 1:
                x = F.pad(x, [0, 0, 0, w % 2, 0, h % 2])
            parts = [x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class _SwinTransformer(_swin.SwinTransformer):
    """MONAI's Swin encoder; ``forward`` returns the five (normalised) channel-first stage maps."""

    __constants__ = ["use_v2"]

    def proj_out(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if normalize:
            n = x.dim() - 2
            x = x.permute([0] + [2 + i for i in range(n)] + [1])
            x = F.layer_norm(x, [x.shape[-1]])
            x = x.permute([0, n + 1] + [1 + i for i in range(n)])
        return x

    def forward(self, x: torch.Tensor, normalize: bool = True) -> List[torch.Tensor]:
        if torch.jit.is_tracing():
            raise RuntimeError("SwinUNETR cannot be exported with torch.jit.trace (ckpt_export --use_trace): a trace "
                               "keeps the window padding and shifts of its example size and fails on other sizes. "
                               "Export by scripting (ckpt_export without --use_trace): the module takes any size "
                               "32*n+32.")
        x0 = self.pos_drop(self.patch_embed(x))
        outs = [self.proj_out(x0, normalize)]
        if self.use_v2:
            x0 = self.layers1c[0](x0.contiguous())
        x1 = self.layers1[0](x0.contiguous())
        outs.append(self.proj_out(x1, normalize))
        if self.use_v2:
            x1 = self.layers2c[0](x1.contiguous())
        x2 = self.layers2[0](x1.contiguous())
        outs.append(self.proj_out(x2, normalize))
        if self.use_v2:
            x2 = self.layers3c[0](x2.contiguous())
        x3 = self.layers3[0](x2.contiguous())
        outs.append(self.proj_out(x3, normalize))
        if self.use_v2:
            x3 = self.layers4c[0](x3.contiguous())
        x4 = self.layers4[0](x3.contiguous())
        outs.append(self.proj_out(x4, normalize))
        return outs


def make_swin_scriptable(module: nn.Module) -> nn.Module:
    """Give every MONAI Swin part inside ``module`` (itself included) its scriptable subclass, in place.

    Args:
        module: a MONAI ``SwinUNETR``, ``SwinTransformer`` or any module holding one.

    Returns:
        ``module``, whose state dict and outputs are unchanged.

    Raises:
        ValueError: a stage uses MONAI's Hyena blocks, which have no scriptable counterpart here.
    """
    for m in module.modules():
        if isinstance(m, _swin.BasicLayer) and getattr(m, "use_hyena", False):
            raise ValueError("make_swin_scriptable: Hyena stages (use_hyena) are not supported.")
    for m in module.modules():
        if type(m) is _swin.SwinTransformer:
            m.__class__ = _SwinTransformer
        elif type(m) is _swin.BasicLayer:
            m.__class__ = _BasicLayer
            m.ws = [int(v) for v in m.window_size]
            m.ss = [int(v) for v in m.shift_size]
        elif type(m) is _swin.SwinTransformerBlock:
            m.__class__ = _SwinTransformerBlock
            m.ws = [int(v) for v in m.window_size]
            m.ss = [int(v) for v in m.shift_size]
        elif type(m) is _swin.WindowAttention:
            m.__class__ = _WindowAttention
        elif type(m) in (_swin.PatchMerging, _swin.PatchMergingV2):
            m.v1 = type(m) is _swin.PatchMerging
            m.__class__ = _PatchMerging
        elif type(m) is PatchEmbed:
            m.patch_list = [int(v) for v in m.patch_size]
            m.__class__ = _PatchEmbed
    return module


class SwinUNETR(_swin.SwinUNETR):
    """MONAI's ``SwinUNETR`` (same arguments, same state dict) whose ``forward`` TorchScript compiles.

    ``forward(x)``: ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)`` logits; every spatial size must be a
    multiple of ``patch_size * 16`` and, with the default patch size 2, at least 64 (the bottleneck instance norm
    needs more than one voxel). Gradient checkpointing (``use_checkpoint``) is not available in this class.
    """

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("use_checkpoint"):
            raise ValueError("SwinUNETR (scriptable): use_checkpoint=True is not supported; set it to false.")
        super().__init__(*args, **kwargs)
        make_swin_scriptable(self.swinViT)
