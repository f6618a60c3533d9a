"""MONAI's Swin encoder with TorchScript-compilable forwards: same modules, same parameters, same state dict.

MONAI's Swin parts cannot be compiled by ``torch.jit.script`` as they are: ``SwinTransformerBlock.forward`` calls
``torch.utils.checkpoint`` (``**kwargs``), the window helpers take untyped tuples, and ``einops.rearrange``,
``numpy`` and ``itertools.product`` run inside ``forward``. :func:`make_swin_scriptable` gives each MONAI Swin
module inside a network (patch embedding, window attention, Swin block, stage, patch merging, the
``SwinTransformer`` itself) a subclass defined here whose ``forward`` does the same computation, in the same
order, with typed code written once for 2D and 3D. Only ``__class__`` and a few integer-list attributes change:
the parameters, buffers and their names stay, so a state dict saved from the stock modules loads key for key and
the outputs are those of the stock modules to float rounding (``tests/core/test_swin_script.py`` pins both). The
one computation done differently is the window attention: one ``F.scaled_dot_product_attention`` call with the
position bias and the shifted-window mask as its additive mask, where MONAI writes the softmax out
(``bench/swin_attention.py`` times the two).

:class:`~mfassl.backbones.MFASwin` applies it to its ``swinViT``, which is what makes the BraTS pretraining
bundle's Swin variant export with ``ckpt_export`` by scripting. :class:`ScriptableWindowAttention` splits the
attention into :meth:`~ScriptableWindowAttention.logits` and :meth:`~ScriptableWindowAttention.mix`, which
:func:`mfassl.backbones.swin_attention.window_attention_forward` reuses around its logit noise; that probe also
uses the window geometry defined here (:func:`window_and_shift`, :func:`padded_size`, :func:`window_reverse`).

The segmentation bundle keeps its own scriptable Swin in ``bundles/mfassl_brats_segmentation/scripts/networks.py``:
that bundle is self-contained (a MONAI model-zoo bundle, and the network MONAI Label serves from a venv without
``mfassl``), so it cannot import this package, and this installed package cannot import from a bundle folder.
``tests/core/test_swin_script.py`` checks that the two give the same outputs for the same weights.

Only torch and MONAI are imported here.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.patchembedding import PatchEmbed
from monai.networks.nets import swin_unetr as _swin

__all__ = [
    "make_swin_scriptable", "window_partition", "window_reverse", "window_and_shift", "padded_size",
    "shifted_window_mask", "position_bias", "split_heads",
    "ScriptablePatchEmbed", "ScriptableWindowAttention", "ScriptableSwinTransformerBlock",
    "ScriptablePatchMerging", "ScriptableBasicLayer", "ScriptableSwinTransformer",
]


def _channels_last(n: int) -> List[int]:
    """Permutation ``(B, C, *S) -> (B, *S, C)`` for ``n`` spatial axes."""
    return [0] + [2 + i for i in range(n)] + [1]


def _channels_first(n: int) -> List[int]:
    """Permutation ``(B, *S, C) -> (B, C, *S)`` for ``n`` spatial axes."""
    return [0, n + 1] + [1 + i for i in range(n)]


def window_partition(x: torch.Tensor, window: List[int]) -> torch.Tensor:
    """Cut a channel-last map into windows.

    Args:
        x: ``(B, *S, C)``, every ``S[i]`` a multiple of ``window[i]``.
        window: window size per spatial axis.

    Returns:
        ``(B * nW, prod(window), C)``, windows in row-major order of the window grid (MONAI's order).
    """
    n = len(window)
    shape = [x.shape[0]]
    size = 1
    for i in range(n):
        shape += [x.shape[1 + i] // window[i], window[i]]
        size *= window[i]
    c = x.shape[-1]
    perm = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 1]
    return x.view(shape + [c]).permute(perm).contiguous().view(-1, size, c)


def window_reverse(windows: torch.Tensor, window: List[int], dims: List[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: ``(B * nW, prod(window), C)`` (or any shape with those elements in that order).
        window: window size per spatial axis.
        dims: ``[B, *S]``.

    Returns:
        ``(B, *S, C)``.
    """
    n = len(window)
    shape = [dims[0]] + [dims[1 + i] // window[i] for i in range(n)] + window + [-1]
    perm = [0]
    for i in range(n):
        perm += [1 + i, 1 + n + i]
    perm.append(2 * n + 1)
    return windows.view(shape).permute(perm).contiguous().view(dims + [-1])


def window_and_shift(size: List[int], window: List[int], shift: List[int]) -> Tuple[List[int], List[int]]:
    """Window and shift used on a map of ``size``: an axis no longer than its window is one unshifted window."""
    use_w = [int(w) for w in window]
    use_s = [int(s) for s in shift]
    for i in range(len(size)):
        if size[i] <= window[i]:
            use_w[i] = size[i]
            use_s[i] = 0
    return use_w, use_s


def padded_size(size: List[int], window: List[int]) -> List[int]:
    """``size`` rounded up, axis by axis, to a multiple of ``window`` (the grid the windows tile)."""
    return [(size[i] + window[i] - 1) // window[i] * window[i] for i in range(len(size))]


def shifted_window_mask(padded: List[int], window: List[int], shift: List[int], device: torch.device) -> torch.Tensor:
    """Additive attention mask of shifted windows.

    After the cyclic shift a window can hold tokens from up to three regions per axis, ``[0, n - w)``,
    ``[n - w, n - s)`` and ``[n - s, n)`` (one region on an unshifted axis); tokens attend only within
    their region. This is the partition of MONAI's ``compute_mask``.

    Args:
        padded: the padded spatial size (multiples of ``window``).
        window: window size per axis.
        shift: shift per axis.
        device: device of the mask.

    Returns:
        ``(nW, N, N)``: 0 between tokens of one region, -100 across regions.
    """
    n = len(padded)
    label = torch.zeros(padded, device=device)
    for i in range(n):
        axis = torch.zeros(padded[i], device=device)
        if shift[i] > 0:
            axis[padded[i] - window[i]:padded[i] - shift[i]] = 1.0
            axis[padded[i] - shift[i]:] = 2.0
        view = [1] * n
        view[i] = padded[i]
        label = label * 3.0 + axis.view(view)
    regions = window_partition(label.unsqueeze(0).unsqueeze(-1), window).squeeze(-1)  # (nW, N)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class ScriptablePatchEmbed(PatchEmbed):
    """MONAI ``PatchEmbed``: ``(B, C, *S)`` zero-padded to multiples of the patch -> ``(B, embed_dim, *S / patch)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.dim() - 2
        pad: List[int] = []
        for i in range(n - 1, -1, -1):  # F.pad lists the last axis first
            p = self.patch_list[i]
            pad += [0, (p - x.shape[2 + i] % p) % p]
        if max(pad) > 0:
            x = F.pad(x, pad)
        x = self.proj(x)
        if self.norm is not None:
            shape = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(shape)
        return x


def position_bias(table: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """``(H, N, N)`` relative position bias of an ``N``-token window from a ``WindowAttention``'s
    ``relative_position_bias_table`` ``(R, H)`` and ``relative_position_index`` ``(N, N)``."""
    return table[index[:n, :n].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


def split_heads(qkv: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values ``(B * nW, H, N, C / H)`` from the ``qkv`` projection ``(B * nW, N, 3C)``."""
    b, n = qkv.shape[0], qkv.shape[1]
    parts = qkv.reshape(b, n, 3, num_heads, qkv.shape[2] // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]


class ScriptableWindowAttention(_swin.WindowAttention):
    """MONAI ``WindowAttention``: ``x`` ``(B * nW, N, C)``, ``mask`` ``(nW, N, N)`` or None.

    :meth:`forward` runs ``F.scaled_dot_product_attention`` with the relative position bias (plus the
    shifted-window mask) as its additive mask, in training as at inference (MONAI's own module takes the
    fused path only without gradients); :meth:`logits` and :meth:`mix` are the explicit computation, for
    callers that need the probabilities (:mod:`mfassl.backbones.swin_attention`). Both give the same output
    (to float rounding; tested) from the same parameters. Which kernel torch picks is its choice: on a CPU
    the flash kernel when nothing asks for the bias's gradient (a teacher, inference; about 4x faster than
    the explicit path on 343-token windows), the math kernel otherwise.
    """

    def logits(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B * nW, H, N, N)`` (scaled q.k, position bias, mask) and values ``(B * nW, H, N, C / H)``."""
        b, n = x.shape[0], x.shape[1]
        h = self.num_heads
        q, k, v = split_heads(self.qkv(x), h)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1) + position_bias(self.relative_position_bias_table, self.relative_position_index,
                                                       n).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, h, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, h, n, n)
        return attn, v

    def mix(self, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``(B * nW, H, N, N)`` and values -> projected output ``(B * nW, N, C)``."""
        b, n = probs.shape[0], probs.shape[2]
        out = (self.attn_drop(probs).to(v.dtype) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj_drop(self.proj(out))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        h = self.num_heads
        d = c // h
        q, k, v = split_heads(self.qkv(x), h)  # (B * nW, H, N, d)
        bias = position_bias(self.relative_position_bias_table, self.relative_position_index, n).to(q.dtype)
        drop = self.attn_drop.p if self.training else 0.0
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), dropout_p=drop,
                                                 scale=self.scale)
        else:
            # windows and heads side by side, (B, nW * H, N, d), so one (nW * H, N, N) mask serves every image
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)).reshape(1, nw * h, n, n)
            shape = [b // nw, nw * h, n, d]
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=bias,
                                                 dropout_p=drop, scale=self.scale)
            out = out.reshape(b, h, n, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class ScriptableSwinTransformerBlock(_swin.SwinTransformerBlock):
    """(Shifted) window attention and MLP with residuals on a channel-last map ``(B, *S, C)``."""

    def forward_part1(self, x: torch.Tensor, mask_matrix: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.norm1(x)
        n = x.dim() - 2
        size = [x.shape[1 + i] for i in range(n)]
        ws, ss = window_and_shift(size, self.ws, self.ss)
        pad: List[int] = [0, 0]
        for i in range(n - 1, -1, -1):
            pad += [0, (ws[i] - size[i] % ws[i]) % ws[i]]
        x = F.pad(x, pad)
        dims = [x.shape[i] for i in range(n + 1)]
        axes = [1 + i for i in range(n)]
        shifted = max(ss) > 0
        attn_mask: Optional[torch.Tensor] = None
        if shifted:
            x = torch.roll(x, shifts=[-s for s in ss], dims=axes)
            attn_mask = mask_matrix
        x = window_reverse(self.attn(window_partition(x, ws), attn_mask), ws, dims)
        if shifted:
            x = torch.roll(x, shifts=ss, dims=axes)
        if max(pad) > 0:
            for i in range(n):
                x = x.narrow(1 + i, 0, size[i])
            x = x.contiguous()
        return x

    def forward_part2(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor, mask_matrix: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.drop_path(self.forward_part1(x, mask_matrix))
        return x + self.forward_part2(x)


class ScriptablePatchMerging(_swin.PatchMergingV2):
    """``(B, *S, C)`` -> ``(B, *ceil(S / 2), 2C)``: the ``2^d`` neighbours concatenated, normalised, reduced.

    ``offsets`` lists the neighbours in the order of the MONAI class it replaces (``PatchMerging`` and
    ``PatchMergingV2`` concatenate in different orders).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.dim() - 2
        pad: List[int] = [0, 0]
        odd = False
        for i in range(n - 1, -1, -1):
            r = x.shape[1 + i] % 2
            odd = odd or r == 1
            pad += [0, r]
        if odd:
            x = F.pad(x, pad)
        shape = [x.shape[0]]
        for i in range(n):
            shape += [x.shape[1 + i] // 2, 2]
        pairs = x.view(shape + [x.shape[-1]])  # (B, S0/2, 2, S1/2, 2, ..., C)
        parts: List[torch.Tensor] = []
        for off in self.offsets:
            p = pairs
            for i in range(n - 1, -1, -1):  # the last axis first keeps the earlier axes' positions
                p = p.select(2 + 2 * i, off[i])
            parts.append(p)
        return self.reduction(self.norm(torch.cat(parts, -1)))


class ScriptableBasicLayer(_swin.BasicLayer):
    """One Swin stage on a channel-first map ``(B, C, *S)``: its blocks, then patch merging if any."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.dim() - 2
        b = x.shape[0]
        size = [x.shape[2 + i] for i in range(n)]
        ws, ss = window_and_shift(size, self.ws, self.ss)
        x = x.permute(_channels_last(n))
        attn_mask: Optional[torch.Tensor] = None
        if max(ss) > 0:  # only shifted blocks read the mask; they shift only where this stage does
            attn_mask = shifted_window_mask(padded_size(size, ws), ws, ss, x.device)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        x = x.view([b] + size + [-1])
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(_channels_first(n))


class ScriptableSwinTransformer(_swin.SwinTransformer):
    """MONAI's ``SwinTransformer``; ``forward`` returns the five channel-first stage maps, as MONAI's does."""

    __constants__ = ["use_v2"]

    def proj_out(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, C, *S)``, layer-normalised over ``C`` (no affine) when ``normalize``."""
        if normalize:
            n = x.dim() - 2
            x = x.permute(_channels_last(n))
            x = F.layer_norm(x, [x.shape[-1]])
            x = x.permute(_channels_first(n))
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, *S)`` -> ``(B, embed_dim, *S / patch)``: patch embedding and dropout."""
        return self.pos_drop(self.patch_embed(x))

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` (1..4), the v2 residual conv block first: ``(B, C, *S)`` -> ``(B, 2C, *S / 2)``."""
        if i == 1:
            if self.use_v2:
                x = self.layers1c[0](x.contiguous())
            return self.layers1[0](x.contiguous())
        if i == 2:
            if self.use_v2:
                x = self.layers2c[0](x.contiguous())
            return self.layers2[0](x.contiguous())
        if i == 3:
            if self.use_v2:
                x = self.layers3c[0](x.contiguous())
            return self.layers3[0](x.contiguous())
        if i == 4:
            if self.use_v2:
                x = self.layers4c[0](x.contiguous())
            return self.layers4[0](x.contiguous())
        raise ValueError(f"stage must lie in [1, 4], got {i}.")

    def forward(self, x: torch.Tensor, normalize: bool = True) -> List[torch.Tensor]:
        h = self.embed(x)
        outs = [self.proj_out(h, normalize)]
        for i in range(1, 5):
            h = self.stage(i, h)
            outs.append(self.proj_out(h, normalize))
        return outs


def _merge_offsets(n: int, v1: bool) -> List[List[int]]:
    """Neighbour offsets in the concatenation order of MONAI's ``PatchMerging`` (v1) or ``PatchMergingV2``."""
    if n == 3 and v1:
        return [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
    if n == 3:  # itertools.product over (d, h, w)
        return [[i, j, k] for i in range(2) for j in range(2) for k in range(2)]
    return [[j, i] for i in range(2) for j in range(2)]  # 2D, both classes: x[:, j::2, i::2] over product(i, j)


def make_swin_scriptable(module: nn.Module) -> nn.Module:
    """Give every MONAI Swin part inside ``module`` (itself included) its scriptable subclass, in place.

    Args:
        module: a MONAI ``SwinTransformer``, ``SwinUNETR`` or any module holding one.

    Returns:
        ``module``; its state dict and its outputs are unchanged. Calling it again changes nothing.

    The window attention becomes fused (:class:`ScriptableWindowAttention`) whatever MONAI's
    ``use_flash_attention`` said (MONAI fuses only without gradients).

    Raises:
        ValueError: a part uses an option without a scriptable counterpart here: Hyena stages
            (``use_hyena``) or gradient checkpointing (``use_checkpoint``).
    """
    for m in module.modules():
        for option in ("use_hyena", "use_checkpoint"):
            if isinstance(m, (_swin.BasicLayer, _swin.SwinTransformerBlock, _swin.WindowAttention)) and \
                    getattr(m, option, False):
                raise ValueError(f"make_swin_scriptable: {type(m).__name__} has {option}=True, which has no "
                                 "scriptable counterpart; build the network with it off.")
    for m in module.modules():
        kind = type(m)
        if kind is _swin.SwinTransformer:
            m.__class__ = ScriptableSwinTransformer
        elif kind is _swin.BasicLayer:
            m.ws, m.ss = [int(v) for v in m.window_size], [int(v) for v in m.shift_size]
            m.__class__ = ScriptableBasicLayer
        elif kind is _swin.SwinTransformerBlock:
            m.ws, m.ss = [int(v) for v in m.window_size], [int(v) for v in m.shift_size]
            m.__class__ = ScriptableSwinTransformerBlock
        elif kind is _swin.WindowAttention:
            m.__class__ = ScriptableWindowAttention
        elif kind in (_swin.PatchMerging, _swin.PatchMergingV2):
            m.offsets = _merge_offsets(3 if m.reduction.in_features == 8 * m.dim else 2, kind is _swin.PatchMerging)
            m.__class__ = ScriptablePatchMerging
        elif kind is PatchEmbed:
            m.patch_list = [int(v) for v in m.patch_size]
            m.__class__ = ScriptablePatchEmbed
    return module
