"""Reading (and perturbing) the window attention of an MFA-Swin at run time, without forking MONAI.

:class:`SwinAttentionProbe` is a context manager over an :class:`~mfassl.backbones.MFASwin`. While it is
open, every MONAI ``WindowAttention`` of the encoder runs :func:`window_attention_forward` instead of its
own forward: the same computation (q/k/v, relative position bias, shifted-window mask, softmax), with
optional Gaussian noise on the attention logits before the softmax (DAGMaN's noisy teacher), and with
two statistics taken from the probabilities as they go by:

- per head and stage, the mean entropy of the attention rows (:func:`attention_entropy`), computed on
  the *clean* probabilities (the model's own attention, without the injected noise);
- per stage in ``map_stages``, the attention *received* by each token (mean over the queries of its
  window), put back on the stage's token grid (shifted windows undone, padding cropped): a
  ``(B, H, *grid)`` map, for both the noisy probabilities (what the teacher used) and the clean ones.

On leaving the context the modules get their own forward back; the module tree and state dict never
change, so a teacher wrapped by a probe stays an exact EMA copy of the student. The patch is an instance
attribute, so it works on the scriptable Swin subclasses :class:`~mfassl.backbones.MFASwin` uses as on MONAI's own.
The window geometry (window size and shift per grid, padding, window order) is the one of
:mod:`mfassl.backbones.swin_script`, so the maps line up with the tokens the blocks computed.

DAGMaN (:mod:`mfassl.objectives.dagman`) scores its masks with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention

from mfassl.backbones.swin_script import ScriptableWindowAttention, padded_size, window_and_shift, window_reverse
from mfassl.rng import randn

__all__ = ["SwinAttentionProbe", "ProbeStats", "window_attention_forward", "attention_entropy", "windows_to_grid",
           "resample_score_map"]


def attention_entropy(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean row entropy per head.

    Args:
        probs: ``(..., H, Q, K)`` attention probabilities (rows sum to 1).

    Returns:
        ``(H,)`` ``mean over (..., Q) of -sum_k p log p`` (natural log; ``0 log 0 = 0``).
    """
    ent = -(probs * (probs + eps).log()).sum(-1)  # (..., H, Q)
    ent = ent.movedim(-2, 0)  # (H, ..., Q)
    return ent.reshape(ent.shape[0], -1).mean(1)


def windows_to_grid(values: torch.Tensor, batch: int, padded: Sequence[int], spatial: Sequence[int],
                    window_size: Sequence[int], shift_size: Sequence[int]) -> torch.Tensor:
    """Put per-window token values back on the (unshifted, unpadded) token grid.

    Args:
        values: ``(B * nW, n, H)`` one ``H``-vector per token of each window (MONAI's window order).
        batch: ``B``.
        padded: the padded grid the windows tile.
        spatial: the grid before padding.
        window_size: the window used at this grid (after :func:`~mfassl.backbones.swin_script.window_and_shift`).
        shift_size: the shift used (zeros for regular windows).

    Returns:
        ``(B, H, *spatial)``.
    """
    dims = [int(batch)] + [int(p) for p in padded]
    grid = window_reverse(values, [int(w) for w in window_size], dims)  # (B, *padded, H)
    if any(s > 0 for s in shift_size):
        grid = torch.roll(grid, shifts=tuple(int(s) for s in shift_size), dims=tuple(range(1, len(padded) + 1)))
    grid = grid[(slice(None), *[slice(0, int(s)) for s in spatial])]
    return grid.movedim(-1, 1).contiguous()


def resample_score_map(score: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Average-pool (or replicate) a ``(B, *g)`` map onto ``grid``: ``(B, *grid)``."""
    pool = F.adaptive_avg_pool2d if score.ndim == 3 else F.adaptive_avg_pool3d
    return pool(score.unsqueeze(1), tuple(int(g) for g in grid)).squeeze(1)


@dataclass
class _BlockInfo:
    stage: int
    block: nn.Module
    shape: tuple[int, ...] | None = None


@dataclass
class ProbeStats:
    """What a :class:`SwinAttentionProbe` collected during one forward.

    Attributes:
        entropy: ``stage -> list of (H,)`` clean-attention entropies, one per block.
        maps: ``stage -> list of (B, H, *grid)`` received attention (noisy = as used), one per block.
        clean_maps: likewise from the clean probabilities.
    """

    entropy: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    maps: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    clean_maps: dict[int, list[torch.Tensor]] = field(default_factory=dict)


def window_attention_forward(attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None,
                             noise_std: float = 0.0, generator: torch.Generator | None = None,
                             observe=None) -> torch.Tensor:
    """MONAI ``WindowAttention.forward`` (non-flash path) with logit noise and an observer.

    The logits and the output projection are :class:`~mfassl.backbones.swin_script.ScriptableWindowAttention`'s
    (``logits`` and ``mix``), so the probe and the scripted encoder share one attention computation.

    Args:
        attn: the MONAI module (its weights are used as they are).
        x: ``(B * nW, n, C)`` window tokens.
        mask: ``(nW, n, n)`` additive shifted-window mask, or None.
        noise_std: standard deviation of the Gaussian noise added to the logits before the softmax
            (0 = the module's own computation).
        generator: random generator of the noise (None: the global one).
        observe: optional callable ``observe(probs, clean_probs)`` with ``(B * nW, H, n, n)`` tensors.

    Returns:
        ``(B * nW, n, C)``, as the module's forward.
    """
    logits, v = ScriptableWindowAttention.logits(attn, x, mask)  # works on any MONAI WindowAttention
    clean = None
    if noise_std > 0:
        noise = randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        if observe is not None:
            clean = logits.softmax(-1)
        logits = logits + noise_std * noise
    probs = logits.softmax(-1)
    if observe is not None:
        observe(probs, probs if clean is None else clean)
    return ScriptableWindowAttention.mix(attn, probs, v)


class SwinAttentionProbe:
    """Context manager: noisy window attention and attention statistics for an MFA-Swin.

    Args:
        backbone: an :class:`~mfassl.backbones.MFASwin` (anything with ``swinViT`` layers).
        noise_std: Gaussian noise on the attention logits (0 = deterministic).
        map_stages: stages (1..4) whose received-attention maps are kept.
        generator: random generator of the noise.

    Example::

        >>> with SwinAttentionProbe(net, noise_std=0.1, map_stages=(3, 4)) as probe:
        ...     tokens = net.forward_features(x)
        >>> probe.stats.entropy[4][0].shape  # (heads of stage 4,)
    """

    def __init__(self, backbone: nn.Module, noise_std: float = 0.0, map_stages: Sequence[int] = (3, 4),
                 generator: torch.Generator | None = None) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        self.backbone = backbone
        self.noise_std = float(noise_std)
        self.map_stages = tuple(int(s) for s in map_stages)
        self.generator = generator
        self.stats = ProbeStats()
        self._handles: list = []
        self._patched: list[WindowAttention] = []

    def _blocks(self) -> list[_BlockInfo]:
        vit = self.backbone.swinViT
        out = []
        for stage in range(1, 5):
            for blk in getattr(vit, f"layers{stage}")[0].blocks:
                if isinstance(getattr(blk, "attn", None), WindowAttention):
                    out.append(_BlockInfo(stage, blk))
        return out

    def _observer(self, info: _BlockInfo):
        def observe(probs: torch.Tensor, clean: torch.Tensor) -> None:
            with torch.no_grad():
                st = self.stats
                st.entropy.setdefault(info.stage, []).append(attention_entropy(clean.float()))
                if info.stage not in self.map_stages or info.shape is None:
                    return
                spatial = [int(s) for s in info.shape[1:-1]]
                window, shift = window_and_shift(spatial, [int(w) for w in info.block.window_size],
                                                 [int(s) for s in info.block.shift_size])
                padded = padded_size(spatial, window)
                batch = info.shape[0]
                for p, store in ((probs, st.maps), (clean, st.clean_maps)):
                    received = p.float().mean(-2).transpose(1, 2)  # (B*nW, n, H)
                    store.setdefault(info.stage, []).append(
                        windows_to_grid(received, batch, padded, spatial, window, shift))
        return observe

    def __enter__(self) -> "SwinAttentionProbe":
        self.stats = ProbeStats()
        for info in self._blocks():
            def pre_hook(module: nn.Module, args: tuple, info: _BlockInfo = info) -> None:
                info.shape = tuple(args[0].shape)
            self._handles.append(info.block.register_forward_pre_hook(pre_hook))
            attn = info.block.attn
            attn.forward = functools.partial(window_attention_forward, attn, noise_std=self.noise_std,
                                             generator=self.generator, observe=self._observer(info))
            self._patched.append(attn)
        return self

    def __exit__(self, *exc) -> None:
        for hnd in self._handles:
            hnd.remove()
        for attn in self._patched:
            if "forward" in attn.__dict__:
                del attn.forward
        self._handles, self._patched = [], []

    # ------------------------------------------------------------------ summaries
    def entropy_per_stage(self) -> dict[int, torch.Tensor]:
        """``stage -> (H,)`` mean clean-attention entropy over the stage's blocks."""
        return {s: torch.stack(v).mean(0) for s, v in self.stats.entropy.items()}

    def score(self, grid: Sequence[int], clean: bool = False) -> torch.Tensor:
        """Per-patch attention score on ``grid``: ``(B, prod(grid))``.

        The received attention of each block in ``map_stages`` is averaged over heads, standardised
        per image (each stage has its own window size, so raw values are not comparable), resampled
        onto ``grid`` and averaged over blocks.
        """
        store = self.stats.clean_maps if clean else self.stats.maps
        maps = [m for s in self.map_stages for m in store.get(s, [])]
        if not maps:
            raise RuntimeError(f"no attention maps were recorded for stages {self.map_stages}.")
        total = 0.0
        for m in maps:
            m = m.mean(1)  # (B, *g)
            flat = m.flatten(1)
            m = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True, unbiased=False) + 1e-6)).view_as(m)
            total = total + resample_score_map(m, grid)
        return (total / len(maps)).flatten(1)
