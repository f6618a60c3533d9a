"""Mirror-Fusion Attention (MFA): gated cross-attention between mirrored tokens.

For pre-fusion patch tokens ``P_l``, ``P_r`` of shape ``(B, N, C)`` (token ``i`` of each side covers
mirror-image anatomy):

- gate per token ``g = sigmoid(a - b * sum_c sqrt((P_l - P_r)^2 + eps^2))`` with ``b = softplus(b_raw)``;
  symmetric regions (small difference) open the gate, asymmetric ones keep it shut;
- ``g_t = r_t * g`` with ``r_t`` a warm-up ramp in ``[0, 1]``;
- ``Z_l = P_l + alpha * g_t * CrossAttn(q=P_l, k=v=P_r) + gamma * (P_l - P_r)`` and symmetrically ``Z_r``.

The q, k, v and output projections are ``Linear(dim, dim)`` with bias and are shared by both
directions, so the block has ``4 * (dim^2 + dim) + 4`` parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MirrorFusionAttention", "MFAOutput"]


class MFAOutput(NamedTuple):
    """Output of :class:`MirrorFusionAttention`.

    Attributes:
        z_l: ``(B, N, C)`` fused tokens of the left half.
        z_r: ``(B, N, C)`` fused tokens of the right half.
        gate_l: ``(B, N)`` gate ``g`` for the left tokens, before the ramp.
        gate_r: ``(B, N)`` gate for the right tokens, before the ramp (equal to ``gate_l``:
            the distance is symmetric).
    """

    z_l: torch.Tensor
    z_r: torch.Tensor
    gate_l: torch.Tensor
    gate_r: torch.Tensor


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class MirrorFusionAttention(nn.Module):
    """Mirror-Fusion Attention block.

    Args:
        dim: token width ``C``.
        num_heads: attention heads; ``dim`` must be divisible by it.
        eps: smoothing of the per-channel absolute difference in the gate.
        a_init: initial gate bias ``a``.
        b_init: initial gate slope ``b`` (stored through its inverse softplus).
        alpha_init: initial weight of the cross-attention term.
        gamma_init: initial weight of the difference term.
        attn_drop: dropout on the attention weights (training only).
        gate_distance: ``"sum"`` (published: the distance sums over the ``C`` channels) or ``"mean"``
            (divided by ``C``, so the gate does not shut as the width grows).

    Example::

        >>> mfa = MirrorFusionAttention(64, num_heads=4)
        >>> p_l, p_r = torch.randn(2, 196, 64), torch.randn(2, 196, 64)
        >>> z_l, z_r, g_l, g_r = mfa(p_l, p_r, ramp=0.5)
    """

    def __init__(self, dim: int, num_heads: int = 12, eps: float = 1e-6, a_init: float = 0.5,
                 b_init: float = 1.0, alpha_init: float = 0.1, gamma_init: float = 0.1,
                 attn_drop: float = 0.0, gate_distance: str = "sum") -> None:
        super().__init__()
        if gate_distance not in ("sum", "mean"):
            raise ValueError(f"gate_distance must be 'sum' or 'mean', got {gate_distance!r}.")
        if dim <= 0 or num_heads <= 0:
            raise ValueError(f"dim and num_heads must be positive, got {dim} and {num_heads}.")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        if b_init <= 0:
            raise ValueError(f"b_init must be positive (b = softplus(b_raw)), got {b_init}.")
        self.dim, self.num_heads, self.eps = dim, num_heads, eps
        self.gate_distance = gate_distance
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.a = nn.Parameter(torch.tensor(float(a_init)))
        self.b_raw = nn.Parameter(torch.tensor(_inverse_softplus(float(b_init))))
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    @property
    def b(self) -> torch.Tensor:
        """The gate slope ``softplus(b_raw)``."""
        return F.softplus(self.b_raw)

    def gate(self, p_l: torch.Tensor, p_r: torch.Tensor) -> torch.Tensor:
        """Gate ``sigmoid(a - b * sum_c sqrt((p_l - p_r)^2 + eps^2))`` of shape ``(B, N)``.

        With ``gate_distance="mean"`` the channel sum is divided by ``C``.
        """
        dist = torch.sqrt((p_l - p_r).pow(2) + self.eps ** 2).sum(-1)
        if self.gate_distance == "mean":
            dist = dist / p_l.shape[-1]
        return torch.sigmoid(self.a - self.b * dist)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

    @staticmethod
    def _attn_mask(key_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SDPA boolean mask ``(B, 1, 1, N)`` and a ``(B,)`` flag of rows with no valid key."""
        if key_mask is None:
            return None, None
        key_mask = key_mask.to(torch.bool)
        empty = ~key_mask.any(dim=1)
        safe = key_mask | empty[:, None]  # a row with no valid key attends everywhere, then is zeroed
        return safe[:, None, None, :], empty

    def cross_attention(self, query: torch.Tensor, context: torch.Tensor,
                        key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``CrossAttn(q=query, k=v=context)`` of shape ``(B, N, C)``; masked keys get no weight."""
        mask, empty = self._attn_mask(key_mask)
        q, k, v = self._split(self.q(query)), self._split(self.k(context)), self._split(self.v(context))
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        out = out.transpose(1, 2).reshape(query.shape)
        out = self.proj(out)
        if empty is not None:
            out = out * (~empty).to(out.dtype)[:, None, None]
        return out

    def attention_weights(self, p_l: torch.Tensor, p_r: torch.Tensor,
                          key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of the left queries over the right keys, ``(B, heads, N, N)`` (for figures)."""
        q, k = self._split(self.q(p_l)), self._split(self.k(p_r))
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        mask, _ = self._attn_mask(key_mask)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.softmax(-1)

    def forward(self, p_l: torch.Tensor, p_r: torch.Tensor, ramp: float | torch.Tensor = 1.0,
                key_mask: torch.Tensor | None = None) -> MFAOutput:
        """Fuse mirrored tokens.

        Args:
            p_l: ``(B, N, C)`` pre-fusion tokens of the left half.
            p_r: ``(B, N, C)`` pre-fusion tokens of the reflected right half.
            ramp: warm-up factor ``r_t`` in ``[0, 1]`` multiplying the gate.
            key_mask: ``(B, N)`` bool, True where a token is valid; invalid tokens are never attended to.

        Returns:
            :class:`MFAOutput` ``(z_l, z_r, gate_l, gate_r)``; gates before the ramp.
        """
        if p_l.shape != p_r.shape or p_l.ndim != 3:
            raise ValueError(f"p_l and p_r must both be (B, N, C), got {list(p_l.shape)} and {list(p_r.shape)}.")
        if p_l.shape[-1] != self.dim:
            raise ValueError(f"tokens have width {p_l.shape[-1]}, MFA was built for {self.dim}.")
        if key_mask is not None and key_mask.shape != p_l.shape[:2]:
            raise ValueError(f"key_mask must be (B, N) = {list(p_l.shape[:2])}, got {list(key_mask.shape)}.")
        g = self.gate(p_l, p_r)
        if isinstance(ramp, torch.Tensor):  # explicit refinement: TorchScript does not multiply a Union
            g_t = (g * ramp).unsqueeze(-1)
        else:
            g_t = (g * float(ramp)).unsqueeze(-1)
        diff = p_l - p_r
        z_l = p_l + self.alpha * g_t * self.cross_attention(p_l, p_r, key_mask) + self.gamma * diff
        z_r = p_r + self.alpha * g_t * self.cross_attention(p_r, p_l, key_mask) - self.gamma * diff
        return MFAOutput(z_l, z_r, g, g)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, eps={self.eps}, gate_distance={self.gate_distance!r}"
