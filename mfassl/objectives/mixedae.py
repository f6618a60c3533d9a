"""MixedAE: masked autoencoding by image mixing with homologous recognition, for the 2D MFA-ViT.

From the related method in ``seeds/002`` (Chen et al., 2023), written for this project's ViT. With a
mixing ratio ``r`` (``1/r = k`` an integer: 0.5, 1/3, 0.25, ...), a batch of ``B`` images becomes
``B / k = B * r`` mixed samples:

1. **Patch-wise mixing** (:func:`mixing_assignment`, :func:`mix_tokens`): each position of a mixed
   sample takes the embedded patch (position embedding included) of one of its ``k`` source images,
   each source owning exactly ``N / k`` random positions. The rest of a source image is hidden, so the
   mixing *is* the mask (mask ratio ``1 - r``). A learnable **segment embedding** (one vector per source
   slot) is added to each mixed patch token, saying which image it came from.
2. **Homologous attention** (:class:`HomologousAttention`): the first ``homologous_from`` blocks attend
   globally; after them, each query attends only to its ``top_k`` highest-logit keys (default
   ``N / k + prefix``, enough to cover its own image's patches and the class token). It runs the timm
   block's own attention weights; the timm modules are untouched. The backbone runs the mixed tokens
   (:meth:`~mfassl.backbones.MFABackbone.forward_tokens`, and
   :meth:`~mfassl.backbones.MFABackbone.forward_paired_tokens` for the mirror pair, the paired forward
   every objective shares) with :meth:`MixedAE.homologous_block` as its per-block hook.
3. **Homologous contrastive loss** (:class:`HomologousContrastiveLoss`) on projected final patch features
   of each mixed sample: patches of the same source are positives, the others negatives.
4. **Un-mixing** (:func:`unmix_tokens`) gives each source image back its own visible tokens at their
   positions; an MAE decoder (:class:`~mfassl.objectives.mae.MAEDecoder`) fills in the hidden ones and
   the pixel loss is taken per source image over its hidden patches.

``loss = rec + lambda_contrast * contrast``. :meth:`MixedAE.extra_state` reports the TopK sampling
accuracy per homologous layer: the share of the selected patch keys that come from the query's own image.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mfassl.backbones import MFABackbone, MFAViT, PairedOutput
from mfassl.objectives.base import BaseObjective, PairResult, ViewSpec, patchify, random_ranks, topk_mask
from mfassl.objectives.mae import MAEDecoder, reconstruction_loss
from mfassl.objectives.registry import OBJECTIVES

__all__ = ["MixedAE", "HomologousAttention", "HomologousContrastiveLoss", "mixing_assignment", "mix_tokens",
           "unmix_tokens", "source_visibility", "mixing_groups", "block_forward"]


# ---------------------------------------------------------------------------- mixing
def mixing_groups(ratio: float) -> int:
    """``k = 1 / r``, the number of source images per mixed sample; ``r`` must lie in (0, 0.5] with ``1/r`` whole."""
    if not 0.0 < ratio <= 0.5:
        raise ValueError(f"mixing ratio must lie in (0, 0.5], got {ratio}.")
    k = int(round(1.0 / ratio))
    if abs(k * ratio - 1.0) > 1e-6:
        raise ValueError(f"1 / mixing ratio must be a whole number (0.5, 1/3, 0.25, ...), got {ratio}.")
    return k


def mixing_assignment(n_mixed: int, num_tokens: int, groups: int, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Random patch-wise assignment of positions to source slots.

    Returns:
        ``(B_mix, N)`` long in ``[0, groups)``, each slot owning exactly ``N / groups`` positions per row.
    """
    if num_tokens % groups:
        raise ValueError(f"{num_tokens} patches cannot be split evenly among {groups} images.")
    return random_ranks(n_mixed, num_tokens, device, generator) % groups


def mix_tokens(tokens: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Mix source tokens into mixed samples.

    Args:
        tokens: ``(B, N, *F)`` per-source tokens, source ``m * k + j`` being slot ``j`` of mixed sample ``m``.
        assign: ``(B / k, N)`` slot of each position.

    Returns:
        ``(B / k, N, *F)`` with ``out[m, p] = tokens[m * k + assign[m, p], p]``.
    """
    b_mix, n = assign.shape
    k = tokens.shape[0] // b_mix
    if b_mix * k != tokens.shape[0]:
        raise ValueError(f"{tokens.shape[0]} source rows do not split into {b_mix} mixed samples.")
    feat = tokens.shape[2:]
    src = tokens.reshape(b_mix, k, n, -1)
    idx = assign.view(b_mix, 1, n, 1).expand(-1, 1, -1, src.shape[-1])
    return src.gather(1, idx).squeeze(1).reshape(b_mix, n, *feat)


def source_visibility(assign: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, N)`` bool: which positions of each source image are visible in its mixed sample."""
    slots = torch.arange(groups, device=assign.device).view(1, groups, 1)
    return (assign.unsqueeze(1) == slots).flatten(0, 1)


def unmix_tokens(mixed: torch.Tensor, assign: torch.Tensor, groups: int, fill: torch.Tensor | float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Give each source image its tokens back.

    Args:
        mixed: ``(B / k, N, *F)`` mixed tokens.
        assign: ``(B / k, N)`` slots.
        groups: ``k``.
        fill: value (or broadcastable tensor) at the positions a source does not own.

    Returns:
        ``(tokens, visible)``: ``(B, N, *F)`` with the source's own tokens at their positions and
        ``fill`` elsewhere, and the ``(B, N)`` bool visibility.
    """
    visible = source_visibility(assign, groups)
    rep = mixed.repeat_interleave(groups, dim=0)
    vis = visible.view(*visible.shape, *([1] * (mixed.ndim - 2)))
    fill_t = torch.as_tensor(fill, dtype=mixed.dtype, device=mixed.device)
    return torch.where(vis, rep, fill_t), visible


# ---------------------------------------------------------------------------- attention
class HomologousAttention(nn.Module):
    """TopK self-attention computed with the weights of a timm ``Attention``.

    Each query keeps only its ``top_k`` largest logits (per head) before the softmax; the other keys get
    probability exactly 0. With ``top_k >= T`` it is the ordinary attention. It has no parameters of its
    own: :meth:`forward` takes the timm module whose ``qkv``/``proj`` (and norms, gate) it uses.

    Attributes:
        last_keep: ``(B, H, T, T)`` bool of the kept keys of the last call (detached), or None.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_keep: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn: nn.Module, top_k: int) -> torch.Tensor:
        """``(B, T, C)`` tokens -> ``(B, T, C)``, with at most ``top_k`` keys per query."""
        b, t, c = x.shape
        h = attn.num_heads
        head_dim = getattr(attn, "head_dim", c // h)
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        q, k, v = attn.qkv(x).reshape(b, t, 3, h, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, T, T)
        keep = topk_mask(logits, min(int(top_k), t))
        self.last_keep = keep.detach()
        probs = logits.masked_fill(~keep, float("-inf")).softmax(-1)
        out = (attn.attn_drop(probs) @ v).transpose(1, 2).reshape(b, t, h * head_dim)
        out = getattr(attn, "norm", nn.Identity())(out)
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out))


def block_forward(blk: nn.Module, x: torch.Tensor, attn_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A timm ``Block`` forward (pre-norm residuals) with its attention replaced by ``attn_fn``."""
    x = x + blk.drop_path1(blk.ls1(attn_fn(blk.norm1(x))))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def topk_sampling_accuracy(keep: torch.Tensor, assign: torch.Tensor, prefix: int) -> torch.Tensor:
    """Share of the kept patch keys of patch queries that come from the query's own source.

    Args:
        keep: ``(B, H, P + N, P + N)`` kept keys.
        assign: ``(B, N)`` source slot of each patch.
        prefix: number of prefix tokens ``P``.
    """
    kp = keep[:, :, prefix:, prefix:]
    same = (assign.unsqueeze(2) == assign.unsqueeze(1)).unsqueeze(1)  # (B, 1, N, N)
    return (kp & same).sum().float() / kp.sum().clamp(min=1).float()


# ---------------------------------------------------------------------------- loss
class HomologousContrastiveLoss(nn.Module):
    """Supervised contrastive loss among the patches of each mixed sample (same source = positive).

    Args:
        temperature: softmax temperature ``tau``.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over anchors of ``-mean_{positives} log softmax(sim / tau)``.

        Args:
            features: ``(B, N, D)`` patch features (normalised here).
            labels: ``(B, N)`` source of each patch.
        """
        f = F.normalize(features, dim=-1)
        sim = f @ f.transpose(1, 2) / self.temperature  # (B, N, N)
        eye = torch.eye(sim.shape[1], dtype=torch.bool, device=sim.device)
        logp = sim.masked_fill(eye, float("-inf")).log_softmax(-1)
        pos = (labels.unsqueeze(2) == labels.unsqueeze(1)) & ~eye
        n_pos = pos.sum(-1)
        per_anchor = -(logp.masked_fill(~pos, 0.0)).sum(-1) / n_pos.clamp(min=1)
        has = n_pos > 0
        return per_anchor[has].mean() if bool(has.any()) else sim.sum() * 0.0


# ---------------------------------------------------------------------------- objective
@OBJECTIVES.register("mixedae")
class MixedAE(BaseObjective):
    """MixedAE on a 2D :class:`~mfassl.backbones.MFAViT` (timm blocks).

    Args:
        backbone: the 2D MFA-ViT.
        mixing_ratio: ``r`` in (0, 0.5] with ``1/r`` whole (0.5: two images per mixed sample).
        top_k: keys kept per query in the homologous blocks (default ``N * r + prefix tokens``).
        homologous_from: first block with homologous attention (1: after the first block).
        segment_embedding: add the learnable source-slot embedding to the mixed tokens.
        lambda_contrast: weight of the homologous contrastive loss.
        temperature: its temperature.
        proj_dim: width of the contrastive projection.
        decoder_dim: MAE decoder width.
        decoder_depth: MAE decoder blocks.
        decoder_heads: MAE decoder heads.
        norm_pix_loss: normalise target patches.

    Example::

        >>> net = MFAViT(2, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4)
        >>> obj = MixedAE(net, decoder_dim=48, decoder_heads=4, decoder_depth=1)
        >>> obj([torch.randn(4, 1, 32, 32)])["loss"].backward()
    """

    name = "mixedae"
    views = ViewSpec(1, 0)
    momentum = None

    def __init__(self, backbone: MFABackbone, mixing_ratio: float = 0.5, top_k: int | None = None,
                 homologous_from: int = 1, segment_embedding: bool = True, lambda_contrast: float = 0.5,
                 temperature: float = 0.2, proj_dim: int = 128, decoder_dim: int = 192, decoder_depth: int = 2,
                 decoder_heads: int = 8, norm_pix_loss: bool = True) -> None:
        super().__init__(backbone)
        if not isinstance(backbone, MFAViT) or backbone.spatial_dims != 2:
            raise ValueError("MixedAE needs a 2D MFAViT backbone (timm blocks).")
        if not 0 <= homologous_from <= backbone.depth:
            raise ValueError(f"homologous_from must lie in [0, {backbone.depth}], got {homologous_from}.")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        self.groups = mixing_groups(mixing_ratio)
        self.mixing_ratio = float(mixing_ratio)
        self.top_k, self.homologous_from = top_k, int(homologous_from)
        self.lambda_contrast, self.norm_pix_loss = lambda_contrast, norm_pix_loss
        dim = backbone.embed_dim
        self.segment = nn.Parameter(torch.zeros(self.groups, dim)) if segment_embedding else None
        if self.segment is not None:
            nn.init.trunc_normal_(self.segment, std=0.02)
        self.hattn = HomologousAttention()
        self.contrast_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, proj_dim))
        self.contrast = HomologousContrastiveLoss(temperature)
        self.decoder = MAEDecoder(dim, math.prod(backbone.patch_size) * backbone.in_chans, 2, decoder_dim,
                                  decoder_depth, decoder_heads)
        self._stats: dict[str, float] = {}

    # ---------------------------------------------------------------- pieces
    def draw_assignment(self, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        """``(batch / k, N)`` random slots; ``batch`` must be a multiple of ``k``."""
        if batch % self.groups:
            raise ValueError(f"MixedAE with mixing ratio {self.mixing_ratio} needs a batch divisible by "
                             f"{self.groups}, got {batch}.")
        return mixing_assignment(batch // self.groups, num_tokens, self.groups, device=device)

    def k_for(self, num_tokens: int) -> int:
        """Keys kept per query: ``top_k``, or ``N / k + prefix``."""
        p = self.backbone.num_prefix_tokens
        return self.top_k if self.top_k is not None else num_tokens // self.groups + p

    def embed_mixed(self, x: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, C, H, W)`` images and mix them: ``(B / k, P + N, C)`` tokens."""
        h = self.backbone.embed(x)
        p = self.backbone.num_prefix_tokens
        mixed = mix_tokens(h[:, p:], assign)
        if self.segment is not None:
            mixed = mixed + self.segment[assign]
        prefix = h[:, :p].reshape(assign.shape[0], self.groups, p, -1)[:, 0]
        return torch.cat([prefix, mixed], dim=1)

    def homologous_block(self, index: int, block: nn.Module, z: torch.Tensor, assign: torch.Tensor,
                         top_k: int) -> torch.Tensor:
        """The backbone's per-block hook (a :data:`~mfassl.backbones.BlockFn` once ``assign`` and ``top_k``
        are bound): block ``index`` on ``(B', P + N, C)`` mixed tokens whose ``(B', N)`` slots are ``assign``;
        from ``homologous_from`` on with TopK attention keeping ``top_k`` keys, its sampling accuracy recorded."""
        if index < self.homologous_from:
            return block(z)
        z = block_forward(block, z, lambda y: self.hattn(y, block.attn, top_k))
        p = self.backbone.num_prefix_tokens
        self._stats[f"mixedae/topk_acc_l{index}"] = float(topk_sampling_accuracy(self.hattn.last_keep, assign, p))
        return z

    def _losses(self, x: torch.Tensor, z: torch.Tensor, assign: torch.Tensor) -> dict[str, torch.Tensor]:
        """Contrastive loss on mixed ``(B/k, P+N, C)`` final tokens and per-source reconstruction of ``x``."""
        p = self.backbone.num_prefix_tokens
        patches = z[:, p:]
        contrast = self.contrast(self.contrast_head(patches), assign)
        tokens, visible = unmix_tokens(patches, assign, self.groups)
        b, n, c = tokens.shape
        grid = self.backbone.grid_shape(x.shape[2:])
        pred = self.decoder(tokens[visible].reshape(b, n // self.groups, c), ~visible, grid)
        rec = reconstruction_loss(pred, patchify(x, self.backbone.patch_size), ~visible, self.norm_pix_loss)
        return {"loss": rec + self.lambda_contrast * contrast, "rec": rec, "contrast": contrast}

    # ---------------------------------------------------------------- entry points
    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses on the first view ``(B, C, H, W)``, ``B`` a multiple of ``1 / r``."""
        self.check_views(views)
        x = views[0]
        n = math.prod(self.backbone.grid_shape(x.shape[2:]))
        assign = self.draw_assignment(x.shape[0], n, x.device)
        self._stats = {}
        block_fn = partial(self.homologous_block, assign=assign, top_k=self.k_for(n))
        z = self.backbone.forward_tokens(self.embed_mixed(x, assign), block_fn=block_fn)
        return self._losses(x, z, assign)

    def forward_pair(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float = 1.0, use_mfa: bool = True,
                     key_mask: torch.Tensor | None = None) -> PairResult:
        """Both halves mixed with one assignment, MFA on the mixed tokens at layer ``l``.

        Position ``p`` of mixed sample ``m`` holds the same source and grid cell on both sides, so the
        mirror correspondence of the tokens survives the mixing. The returned :class:`PairedOutput`
        is un-mixed: per source image, its visible tokens in grid order (``pre_*`` ``(B, N r, C)``,
        ``out_*`` ``(B, P + N r, C)`` with its mixed sample's prefix tokens, gates ``(B, N r)``), and
        ``token_mask`` ``(B, N)`` marks each source's hidden positions, as for MAE's dropped tokens.
        """
        if x_l.shape != x_r.shape:
            raise ValueError(f"x_l and x_r must have one shape, got {tuple(x_l.shape)} and {tuple(x_r.shape)}.")
        bb = self.backbone
        b, p, g = x_l.shape[0], bb.num_prefix_tokens, self.groups
        n = math.prod(bb.grid_shape(x_l.shape[2:]))
        assign = self.draw_assignment(b, n, x_l.device)
        self._stats = {}
        block_fn = partial(self.homologous_block, assign=torch.cat([assign, assign]), top_k=self.k_for(n))
        km = None if key_mask is None else mix_tokens(key_mask.unsqueeze(-1), assign).squeeze(-1)
        mixed = bb.forward_paired_tokens(self.embed_mixed(x_l, assign), self.embed_mixed(x_r, assign), ramp=ramp,
                                         use_mfa=use_mfa, key_mask=km, block_fn=block_fn)
        left, right = self._losses(x_l, mixed.out_l, assign), self._losses(x_r, mixed.out_r, assign)
        losses = {k: 0.5 * (left[k] + right[k]) for k in left}
        visible = source_visibility(assign, g)

        def own(t: torch.Tensor) -> torch.Tensor:  # (B/k, N, *F) -> (B, N r, *F)
            mine = t.repeat_interleave(g, dim=0)[visible]
            return mine.reshape(b, n // g, *t.shape[2:])

        def out(zz: torch.Tensor) -> torch.Tensor:
            return torch.cat([zz[:, :p].repeat_interleave(g, dim=0), own(zz[:, p:])], dim=1)

        paired = PairedOutput(own(mixed.pre_l), own(mixed.pre_r), out(mixed.out_l), out(mixed.out_r),
                              None if mixed.gate_l is None else own(mixed.gate_l),
                              None if mixed.gate_r is None else own(mixed.gate_r))
        return PairResult(losses, paired, ~visible)

    def extra_state(self) -> dict[str, Any]:
        """Last step's ``mixedae/topk_acc_l{layer}`` per homologous layer."""
        return dict(self._stats)
