"""The interface every MFA backbone implements, and the paired forward they share.

An MFA backbone is an ordinary encoder split at layer ``l`` into a *pre* part (stem + blocks
``1..l``) and a *post* part (blocks ``l+1..L`` + final norm), with a
:class:`~mfassl.mfa.MirrorFusionAttention` block that can sit between them:

- :meth:`MFABackbone.forward` / :meth:`MFABackbone.forward_features`: the unchanged encoder (no
  pair, no MFA): what downstream tasks and inference use;
- :meth:`MFABackbone.forward_paired`: both halves of a mirror pair through the pre part in one
  batch, MFA on their patch tokens (or skipped), then the post part;
- :meth:`MFABackbone.forward_tokens` / :meth:`MFABackbone.forward_paired_tokens`: the same from input
  tokens (what :meth:`MFABackbone.embed` returns, possibly edited: mixed, masked) instead of images.

How each block runs is a hook, as timm's ``block_fn`` lets the model decide what a block is: a
:data:`BlockFn` ``block_fn(index, block, x)`` given to a forward (MixedAE's TopK attention), else
:meth:`MFABackbone.run_block`, which is ``block(x)``.

Subclasses provide :meth:`~MFABackbone.embed`, ``_stem``, ``_pre``, ``_post``, ``_split`` and ``_merge``
(and ``_stem_tokens`` to start from tokens); the logic of the paired forward lives here once, for 2D and
3D, ViT and Swin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn

from mfassl.mfa import MirrorFusionAttention

__all__ = ["PairedOutput", "MFABackbone", "BlockFn", "default_mfa_layer"]

BlockFn = Callable[[int, nn.Module, torch.Tensor], torch.Tensor]
"""How one block runs: ``block_fn(index, block, x)`` returns the block's output for its ``(B, T, C)`` input
``x``; ``index`` counts the encoder's blocks from 0. The default (:meth:`MFABackbone.run_block`) is ``block(x)``.
TorchScript cannot call a Python function, so a scripted module runs its blocks plainly."""


class PairedOutput(NamedTuple):
    """Result of :meth:`MFABackbone.forward_paired`.

    Attributes:
        pre_l: ``(B, N, C_l)`` patch tokens of ``x_l`` after layer ``l``, before MFA.
        pre_r: ``(B, N, C_l)`` likewise for ``x_r``.
        out_l: ``(B, T, C)`` final (post-fusion) tokens of ``x_l`` (prefix tokens first for a ViT).
        out_r: ``(B, T, C)`` likewise for ``x_r``.
        gate_l: ``(B, N)`` MFA gate before the ramp, or None when MFA was skipped.
        gate_r: ``(B, N)`` likewise, or None.
    """

    pre_l: torch.Tensor
    pre_r: torch.Tensor
    out_l: torch.Tensor
    out_r: torch.Tensor
    gate_l: torch.Tensor | None
    gate_r: torch.Tensor | None


def default_mfa_layer(depth: int) -> int:
    """Layer ``l`` for a ``depth``-block encoder: 8 of 12 (the published choice), scaled."""
    return max(1, min(depth, int(round(depth * 8 / 12))))


class MFABackbone(nn.Module):
    """Base class of the MFA backbones.

    Subclasses set ``spatial_dims``, ``in_chans``, ``embed_dim`` (width of the final tokens),
    ``mfa_dim`` (width at the MFA layer), ``patch_size`` (pixels per input token),
    ``mfa_patch_size`` (pixels per token at the MFA layer), ``out_patch_size`` (pixels per final token),
    ``num_prefix_tokens`` and ``mfa``.
    ``token_masking`` says how :meth:`forward_features` treats ``token_mask``: ``"drop"`` (the masked
    tokens are removed, as in MAE) or ``"replace"`` (they are replaced by a learned mask token).
    ``trace_refusal``: why ``torch.jit.trace`` cannot give a module that takes every input size (the forward
    raises it while tracing, e.g. under ``ckpt_export --use_trace``), or ``""`` when a trace generalises.
    """

    num_prefix_tokens = 0
    token_masking = "drop"
    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations and cannot resolve these
        spatial_dims: int
        in_chans: int
        embed_dim: int
        mfa_dim: int
        patch_size: tuple[int, ...]
        mfa_patch_size: tuple[int, ...]
        out_patch_size: tuple[int, ...]
        mfa: MirrorFusionAttention

    # ---------------------------------------------------------------- subclass interface
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The input tokens, before the first block: what objectives that edit tokens (mixing) start from.

        Args:
            x: ``(B, C, *S)`` images.

        Returns:
            ``(B, P + N, C_0)``: the ``P = num_prefix_tokens`` prefix tokens first, then the ``N`` patch
            tokens in row-major grid order, position embedding included; ``C_0`` is the width of the
            patch embedding.
        """
        raise NotImplementedError

    def _stem(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[Any, dict[str, torch.Tensor]]:
        """Embed ``(B, C, *S)`` images; returns the hidden state and a context dict for later stages."""
        raise NotImplementedError

    def _stem_tokens(self, tokens: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        """The hidden state and context of ``(B, P + N, C_0)`` input tokens (:meth:`embed`'s form)."""
        raise NotImplementedError(f"{type(self).__name__} does not run from input tokens.")

    # ``block_fn`` is typed Any below: TorchScript reads these signatures and cannot read a Callable
    def _pre(self, h: Any, ctx: dict[str, torch.Tensor], block_fn: Any = None) -> Any:
        """Run the blocks up to and including layer ``l``, each through ``block_fn`` (a :data:`BlockFn`) or
        :meth:`run_block`."""
        raise NotImplementedError

    def _post(self, h: Any, ctx: dict[str, torch.Tensor], block_fn: Any = None) -> torch.Tensor:
        """Run the remaining blocks (as :meth:`_pre` does) and the final norm; returns ``(B, T, C)`` tokens."""
        raise NotImplementedError

    def _split(self, h: Any, ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``(B, N, C_l)`` patch tokens of the hidden state at layer ``l``."""
        raise NotImplementedError

    def _merge(self, h: Any, tokens: torch.Tensor, ctx: dict[str, torch.Tensor]) -> Any:
        """The hidden state with its patch tokens replaced by ``tokens``."""
        raise NotImplementedError

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Global feature ``(B, C)`` from final tokens ``(B, T, C)``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared logic
    def run_block(self, index: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The default :data:`BlockFn`: ``block(x)``; a subclass may run its blocks otherwise.

        Args:
            index: the block's place in the encoder, from 0.
            block: the block.
            x: ``(B, T, C)`` its input tokens.
        """
        return block(x)

    def grid_shape(self, spatial_shape: Sequence[int], at_mfa: bool = False) -> tuple[int, ...]:
        """Token grid of an input of ``spatial_shape`` (at the input or at the MFA layer)."""
        ps = self.mfa_patch_size if at_mfa else self.patch_size
        return tuple(int(s) // int(p) for s, p in zip(spatial_shape, ps))

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() and self.trace_refusal:
            raise RuntimeError(self.trace_refusal)
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a (B, C, {'H, W' if self.spatial_dims == 2 else 'X, Y, Z'}) input for "
                             f"spatial_dims={self.spatial_dims}, got shape {list(x.shape)}.")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]}.")

    def forward_features(self, x: torch.Tensor, token_mask: torch.Tensor | None = None,
                         block_fn: Any = None) -> torch.Tensor:  # Any: TorchScript compiles this signature
        """The unchanged encoder.

        Args:
            x: ``(B, C, *S)`` images.
            token_mask: optional ``(B, N)`` bool over the input token grid, True where a token is
                hidden (dropped or replaced, see ``token_masking``); drop requires the same count per row.
            block_fn: a :data:`BlockFn` that runs each block (default :meth:`run_block`).

        Returns:
            ``(B, T, C)`` final tokens (prefix tokens first).
        """
        self._check_input(x)
        h, ctx = self._stem(x, token_mask)
        return self._post(self._pre(h, ctx, block_fn), ctx, block_fn)

    def forward_tokens(self, tokens: torch.Tensor, block_fn: BlockFn | None = None) -> torch.Tensor:
        """The unchanged encoder from input tokens instead of images.

        Args:
            tokens: ``(B, P + N, C_0)`` as :meth:`embed` returns them, possibly edited (mixed, masked).
            block_fn: a :data:`BlockFn` that runs each block (default :meth:`run_block`).

        Returns:
            ``(B, T, C)`` final tokens (prefix tokens first).
        """
        h, ctx = self._stem_tokens(tokens)
        return self._post(self._pre(h, ctx, block_fn), ctx, block_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global feature ``(B, embed_dim)`` of the plain encoder (MFA is not used)."""
        return self.pool(self.forward_features(x))

    def forward_paired(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float | torch.Tensor = 1.0,
                       use_mfa: bool = True, key_mask: torch.Tensor | None = None,
                       token_mask: torch.Tensor | None = None, block_fn: BlockFn | None = None) -> PairedOutput:
        """Encode a mirror pair with Mirror-Fusion Attention at layer ``l``.

        Args:
            x_l: ``(B, C, *M)`` left halves.
            x_r: ``(B, C, *M)`` reflected right halves.
            ramp: the gate warm-up ``r_t``.
            use_mfa: False skips the MFA block (before ``t_mfa`` in the schedule).
            key_mask: ``(B, N_l)`` bool over the MFA-layer token grid, True where valid.
            token_mask: ``(B, N)`` bool over the input token grid, True where hidden; the same mask is
                used for both halves so token ``i`` is visible on both sides.
            block_fn: a :data:`BlockFn` that runs each block (default :meth:`run_block`).

        Returns:
            :class:`PairedOutput`.
        """
        if x_l.shape != x_r.shape:
            raise ValueError(f"x_l and x_r must have one shape, got {tuple(x_l.shape)} and {tuple(x_r.shape)}.")
        self._check_input(x_l)
        b = x_l.shape[0]
        tm = None if token_mask is None else torch.cat([token_mask, token_mask])
        h, ctx = self._stem(torch.cat([x_l, x_r]), tm)
        if use_mfa and key_mask is not None and token_mask is not None and self.token_masking == "drop":
            key_mask = key_mask[~token_mask].reshape(b, -1)
        return self._fuse_pair(h, ctx, ramp, use_mfa, key_mask, block_fn)

    def forward_paired_tokens(self, tokens_l: torch.Tensor, tokens_r: torch.Tensor, ramp: float | torch.Tensor = 1.0,
                              use_mfa: bool = True, key_mask: torch.Tensor | None = None,
                              block_fn: BlockFn | None = None) -> PairedOutput:
        """:meth:`forward_paired` from input tokens instead of images.

        Args:
            tokens_l: ``(B, P + N, C_0)`` tokens of the left halves, as :meth:`embed` returns them, possibly
                edited (mixed, masked).
            tokens_r: ``(B, P + N, C_0)`` likewise for the reflected right halves.
            ramp: the gate warm-up ``r_t``.
            use_mfa: False skips the MFA block.
            key_mask: ``(B, N)`` bool over the patch tokens at layer ``l``, True where valid.
            block_fn: a :data:`BlockFn` that runs each block (default :meth:`run_block`).

        Returns:
            :class:`PairedOutput`.
        """
        if tokens_l.shape != tokens_r.shape:
            raise ValueError(f"tokens_l and tokens_r must have one shape, got {tuple(tokens_l.shape)} and "
                             f"{tuple(tokens_r.shape)}.")
        h, ctx = self._stem_tokens(torch.cat([tokens_l, tokens_r]))
        return self._fuse_pair(h, ctx, ramp, use_mfa, key_mask, block_fn)

    def _fuse_pair(self, h: Any, ctx: dict[str, torch.Tensor], ramp: float | torch.Tensor, use_mfa: bool,
                   key_mask: torch.Tensor | None, block_fn: BlockFn | None) -> PairedOutput:
        """The paired forward after the stem: ``h`` holds the left halves, then the right ones."""
        b = h.shape[0] // 2
        h = self._pre(h, ctx, block_fn)
        pre = self._split(h, ctx)
        pre_l, pre_r = pre[:b], pre[b:]
        gate_l = gate_r = None
        if use_mfa:
            z_l, z_r, gate_l, gate_r = self.mfa(pre_l, pre_r, ramp=ramp, key_mask=key_mask)
            h = self._merge(h, torch.cat([z_l, z_r]), ctx)
        out = self._post(h, ctx, block_fn)
        return PairedOutput(pre_l, pre_r, out[:b], out[b:], gate_l, gate_r)

    def mfa_parameters(self) -> list[nn.Parameter]:
        return list(self.mfa.parameters())

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the MFA block."""
        ids = {id(p) for p in self.mfa.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]
