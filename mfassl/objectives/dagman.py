"""DAGMaN: attention-guided masked image modelling for Swin with a noisy co-distillation teacher.

From the related method in ``seeds/003`` (Jiang, Rangnekar, Veeraraghavan, 2026), written for the
MFA-Swin of this project (2D and 3D). One step on an image batch ``x`` ``(B, C, *S)``:

1. **Teacher** (momentum copy of the student backbone, MFA block included) encodes the full image under
   a :class:`~mfassl.backbones.swin_attention.SwinAttentionProbe`: Gaussian noise of standard deviation
   ``noise_std`` is added to every window-attention logit before the softmax (the *noisy teacher*; 0 =
   deterministic), and the attention each token *receives* (mean over the queries of its window) is
   recorded.
2. **Per-patch score** (Swin has no CLS token). ``score_source="attention"`` (default): the received
   attention of the blocks of ``score_stages`` (default the last two stages, where windows cover most of
   the image), averaged over heads, standardised per image, average-pooled onto the mask grid and
   averaged over blocks. ``score_source="features"``: cosine similarity of each final teacher token to
   the image's mean token (a pseudo-CLS), replicated onto the mask grid.
3. **Mask**: the ``round(mask_ratio * N)`` highest-scored mask cells (``guided=True``), or uniformly
   random ones (``guided=False``). A mask cell is ``patch_size * 2**mask_stage`` voxels wide; it is
   repeated onto the patch grid and hidden patches become the backbone's mask token (SimMIM-style).
4. **Student** encodes the masked image; a linear head predicts the pixels of each final-stage cell, and
   the reconstruction loss (normalised pixels, MSE) is taken over the hidden mask cells.
5. **Co-distillation** (three terms, the seed's ``lambda_AITD = lambda_GITD = lambda_AMPD = 0.1``): a
   predictor MLP maps the student's final tokens ``p`` to the teacher's ``t``;

   - ``ampd`` (attention-guided masked patch distillation): ``1 - cos(p_i, t_i)`` per final token, weighted
     by the share of hidden cells under it;
   - ``gitd`` (global image token distillation): ``1 - cos`` of the token means (Swin has no CLS token);
   - ``aitd`` (attentive image token distillation): ``1 - cos`` of the attention-pooled tokens
     ``sum_i w_i p_i`` and ``sum_i w_i t_i``, ``w = softmax_i`` of the teacher's score on the final-token grid.

``loss = lambda_rec * rec + lambda_aitd * aitd + lambda_gitd * gitd + lambda_ampd * ampd``; the student
gets stochastic depth ``drop_path`` (0.1, linear over the blocks as in Swin), the teacher none.

:meth:`DAGMaN.extra_state` reports the teacher's attention entropy per stage and head (clean
probabilities, before the noise) and ``mask_overlap``: the share of the chosen hidden cells that are
also among the top-scored cells of the *noise-free* attention of the same pass (1 with guidance and no
noise, about ``mask_ratio`` for random masks).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mfassl.backbones import MFABackbone
from mfassl.objectives.base import (BaseObjective, PairResult, ViewSpec, patchify, random_token_mask, topk_mask,
                                    unpatchify)
from mfassl.objectives.mae import reconstruction_loss, upsample_token_mask
from mfassl.objectives.registry import OBJECTIVES

if TYPE_CHECKING:
    from mfassl.backbones.swin_attention import SwinAttentionProbe

__all__ = ["DAGMaN", "attention_guided_mask", "mask_overlap", "set_drop_path"]


def attention_guided_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Hide the ``round(ratio * N)`` highest-scored cells of each row.

    Args:
        scores: ``(B, N)`` per-cell scores.
        ratio: share of hidden cells in ``[0, 1)``.

    Returns:
        ``(B, N)`` bool, True for hidden cells.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}.")
    return topk_mask(scores, int(round(ratio * scores.shape[1])))


def mask_overlap(mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Share of hidden cells of ``mask`` ``(B, N)`` that are among the top-``k`` of ``scores`` (k = hidden count)."""
    n_hide = int(mask.sum(1).max())
    if n_hide == 0:
        return torch.ones((), device=mask.device)
    return (mask & topk_mask(scores, n_hide)).sum().float() / mask.sum().clamp(min=1).float()


def set_drop_path(backbone: nn.Module, rate: float) -> int:
    """Stochastic depth on every MONAI ``SwinTransformerBlock`` of ``backbone``, linear from 0 to ``rate``.

    Block ``k`` of ``n`` (in module order, i.e. stage by stage) drops its residual branches with probability
    ``rate * k / (n - 1)``, the schedule MONAI's ``SwinTransformer`` uses for ``drop_path_rate``. ``rate = 0``
    removes stochastic depth. DropPath has no parameters, so the state dict does not change.

    Returns:
        The number of blocks set.
    """
    from monai.networks.layers import DropPath
    from monai.networks.nets.swin_unetr import SwinTransformerBlock

    blocks = [m for m in backbone.modules() if isinstance(m, SwinTransformerBlock)]
    n = len(blocks)
    for k, block in enumerate(blocks):
        p = rate * k / max(n - 1, 1)
        block.drop_path = DropPath(p) if p > 0.0 else nn.Identity()
    return n


@OBJECTIVES.register("dagman")
class DAGMaN(BaseObjective):
    """DAGMaN on an :class:`~mfassl.backbones.MFASwin` (2D or 3D).

    Args:
        backbone: the student MFA-Swin.
        mask_ratio: share of hidden mask cells (0.6).
        mask_stage: mask cell size ``patch_size * 2**mask_stage`` (0..4; 2 = the stride of stage 2's tokens).
        guided: attention-guided masks (True) or uniformly random ones (False).
        noise_std: standard deviation of the Gaussian noise on the teacher's attention logits (0 = none).
        score_source: ``"attention"`` (received window attention) or ``"features"`` (similarity to the
            mean teacher token).
        score_stages: stages (1..4) whose attention makes the score.
        predictor_hidden: hidden width of the co-distillation predictor (default: twice the token width).
        lambda_rec: weight of the pixel reconstruction (1.0).
        lambda_aitd: weight of the attentive (attention-pooled) image token distillation (0.1).
        lambda_gitd: weight of the global (mean) image token distillation (0.1).
        lambda_ampd: weight of the masked patch token distillation (0.1).
        norm_pix_loss: normalise each target mask cell.
        drop_path: stochastic depth of the student's Swin blocks, the maximum of a linear schedule over the
            blocks (0.1); the teacher copy never drops paths. None keeps the backbone's own setting.

    Example::

        >>> net = MFASwin(2, in_chans=1, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4)
        >>> obj = DAGMaN(net, noise_std=0.1)
        >>> obj([torch.randn(2, 1, 64, 64)])["loss"].backward()
    """

    name = "dagman"
    views = ViewSpec(1, 0)
    momentum = 0.996

    def __init__(self, backbone: MFABackbone, mask_ratio: float = 0.6, mask_stage: int = 2, guided: bool = True,
                 noise_std: float = 0.1, score_source: str = "attention", score_stages: Sequence[int] = (3, 4),
                 predictor_hidden: int | None = None, lambda_rec: float = 1.0, lambda_aitd: float = 0.1,
                 lambda_gitd: float = 0.1, lambda_ampd: float = 0.1, norm_pix_loss: bool = True,
                 drop_path: float | None = 0.1) -> None:
        super().__init__(backbone)
        from mfassl.backbones.swin import MFASwin  # MONAI's Swin, imported when a DAGMaN is built

        if not isinstance(backbone, MFASwin):
            raise ValueError(f"DAGMaN needs an MFASwin backbone, got {type(backbone).__name__}.")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}.")
        if not 0 <= mask_stage <= 4:
            raise ValueError(f"mask_stage must lie in [0, 4], got {mask_stage}.")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        if score_source not in ("attention", "features"):
            raise ValueError(f"score_source must be 'attention' or 'features', got {score_source!r}.")
        if not score_stages or any(not 1 <= int(s) <= 4 for s in score_stages):
            raise ValueError(f"score_stages must be a non-empty subset of 1..4, got {score_stages}.")
        self.mask_ratio, self.guided, self.noise_std = float(mask_ratio), bool(guided), float(noise_std)
        self.score_source, self.score_stages = score_source, tuple(int(s) for s in score_stages)
        self.lambda_rec = float(lambda_rec)
        self.lambda_aitd, self.lambda_gitd, self.lambda_ampd = float(lambda_aitd), float(lambda_gitd), float(lambda_ampd)
        if drop_path is not None and not 0.0 <= float(drop_path) < 1.0:
            raise ValueError(f"drop_path must lie in [0, 1), got {drop_path}.")
        self.norm_pix_loss = norm_pix_loss
        self.mask_factor = (2 ** mask_stage,) * backbone.spatial_dims
        self.unit = tuple(p * f for p, f in zip(backbone.patch_size, self.mask_factor))
        self.out_unit = tuple(backbone.out_patch_size)
        dim = backbone.embed_dim
        self.decoder = nn.Linear(dim, math.prod(self.out_unit) * backbone.in_chans)
        hidden = predictor_hidden or 2 * dim
        self.predictor = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.teacher = self._make_teacher(backbone)
        set_drop_path(self.teacher[0], 0.0)
        if drop_path is not None:
            set_drop_path(backbone, float(drop_path))
        self._stats: dict[str, float] = {}

    def student_teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher[0])]

    # ---------------------------------------------------------------- geometry
    def _grids(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(mask grid, final-token grid)`` of ``(B, C, *S)`` inputs."""
        spatial = x.shape[2:]
        if any(int(s) % u for s, u in zip(spatial, self.out_unit)):
            raise ValueError(f"DAGMaN needs spatial sizes divisible by the final stride {self.out_unit}, "
                             f"got {tuple(spatial)}.")
        return (tuple(int(s) // u for s, u in zip(spatial, self.unit)),
                tuple(int(s) // u for s, u in zip(spatial, self.out_unit)))

    def input_mask(self, mask: torch.Tensor, mask_grid: Sequence[int]) -> torch.Tensor:
        """A ``(B, N_mask)`` cell mask repeated onto the ``(B, N)`` patch grid of the backbone's input."""
        return upsample_token_mask(mask, mask_grid, self.mask_factor)

    # ---------------------------------------------------------------- teacher
    @torch.no_grad()
    def teacher_pass(self, x_l: torch.Tensor, x_r: torch.Tensor | None = None, ramp: float = 1.0,
                     use_mfa: bool = True, key_mask: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Any, torch.Tensor, torch.Tensor, SwinAttentionProbe]:
        """Noisy teacher on full images (one view, or a mirror pair through its paired forward).

        Returns:
            ``(tokens, score, clean_score, probe)``: final teacher tokens (``(B, N_out, C)``, or the
            teacher's :class:`PairedOutput` for a pair), the ``(B, N_mask)`` score used for masking,
            the same score from the noise-free probabilities, and the probe with the statistics. For a
            pair, the scores are the mean of both halves' scores, so one mask serves both.
        """
        from mfassl.backbones.swin_attention import SwinAttentionProbe, resample_score_map  # with the backbone

        teacher = self.teacher[0]
        mask_grid, out_grid = self._grids(x_l)
        stages = self.score_stages if self.score_source == "attention" else ()
        with SwinAttentionProbe(teacher, self.noise_std, stages, generator) as probe:
            if x_r is None:
                out: Any = teacher.forward_features(x_l)
                final = out
            else:
                out = teacher.forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask)
                final = torch.cat([out.out_l, out.out_r])
        if self.score_source == "attention":
            score, clean = probe.score(mask_grid), probe.score(mask_grid, clean=True)
        else:
            f = F.normalize(final, dim=-1)
            sim = (f * F.normalize(f.mean(1, keepdim=True), dim=-1)).sum(-1)  # (B', N_out)
            score = resample_score_map(sim.view(-1, *out_grid), mask_grid).flatten(1)
            clean = score
        if x_r is not None:
            b = x_l.shape[0]
            score, clean = 0.5 * (score[:b] + score[b:]), 0.5 * (clean[:b] + clean[b:])
        return out, score, clean, probe

    def draw_mask(self, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N_mask)`` hidden cells from ``(B, N_mask)`` teacher scores (random when not guided).

        ``valid`` (optional ``(B, N_mask)`` bool) pushes invalid cells (padding) to the bottom of the ranking.
        """
        if not self.guided:
            return random_token_mask(scores.shape[0], scores.shape[1], self.mask_ratio, device=scores.device)
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        return attention_guided_mask(scores, self.mask_ratio)

    # ---------------------------------------------------------------- losses
    def _losses(self, x: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                score: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction and the three co-distillation terms for one view.

        Args:
            x: ``(B, C, *S)`` images.
            student: ``(B, N_out, C')`` final student tokens (masked input).
            teacher: ``(B, N_out, C')`` final teacher tokens (full input).
            mask: ``(B, N_mask)`` hidden cells.
            score: ``(B, N_mask)`` the teacher's per-cell score that chose the mask.
        """
        from mfassl.backbones.swin_attention import resample_score_map  # MONAI's Swin, loaded with the backbone

        mask_grid, out_grid = self._grids(x)
        pred = unpatchify(self.decoder(student), self.out_unit, out_grid, x.shape[1])
        rec = reconstruction_loss(patchify(pred, self.unit), patchify(x, self.unit), mask, self.norm_pix_loss)
        p = self.predictor(student)
        weight = resample_score_map(mask.float().view(-1, *mask_grid), out_grid).flatten(1)  # share hidden
        t = teacher.detach()
        cos = F.cosine_similarity(p, t, dim=-1)
        ampd = ((1 - cos) * weight).sum() / weight.sum().clamp(min=1e-6)
        gitd = (1 - F.cosine_similarity(p.mean(1), t.mean(1), dim=-1)).mean()
        w = resample_score_map(score.detach().view(-1, *mask_grid), out_grid).flatten(1).softmax(1)  # (B, N_out)
        aitd = (1 - F.cosine_similarity((w[..., None] * p).sum(1), (w[..., None] * t).sum(1), dim=-1)).mean()
        total = self.lambda_rec * rec + self.lambda_aitd * aitd + self.lambda_gitd * gitd + self.lambda_ampd * ampd
        return {"loss": total, "rec": rec, "aitd": aitd, "gitd": gitd, "ampd": ampd}

    def _record(self, probe: SwinAttentionProbe, mask: torch.Tensor, clean: torch.Tensor) -> None:
        stats: dict[str, float] = {"dagman/mask_overlap": float(mask_overlap(mask, clean))}
        for stage, ent in sorted(probe.entropy_per_stage().items()):
            for head, value in enumerate(ent.tolist()):
                stats[f"dagman/entropy_s{stage}_h{head}"] = value
        self._stats = stats

    # ---------------------------------------------------------------- entry points
    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses on the first view ``(B, C, *S)`` (the other views are ignored)."""
        self.check_views(views)
        x = views[0]
        mask_grid, _ = self._grids(x)
        t_tokens, score, clean, probe = self.teacher_pass(x)
        mask = self.draw_mask(score)
        s_tokens = self.backbone.forward_features(x, token_mask=self.input_mask(mask, mask_grid))
        self._record(probe, mask, clean)
        return self._losses(x, s_tokens, t_tokens, mask, score)

    def forward_pair(self, x_l: torch.Tensor, x_r: torch.Tensor, ramp: float = 1.0, use_mfa: bool = True,
                     key_mask: torch.Tensor | None = None) -> PairResult:
        """The mirror pair through the student's paired forward with one shared, attention-guided mask."""
        from mfassl.backbones.swin_attention import resample_score_map  # MONAI's Swin, loaded with the backbone

        mask_grid, _ = self._grids(x_l)
        t, score, clean, probe = self.teacher_pass(x_l, x_r, ramp, use_mfa, key_mask)
        valid = None
        if key_mask is not None:
            mfa_grid = self.backbone.grid_shape(x_l.shape[2:], at_mfa=True)
            valid = resample_score_map(key_mask.float().view(-1, *mfa_grid), mask_grid).flatten(1) > 0.5
        mask = self.draw_mask(score, valid)
        paired = self.backbone.forward_paired(x_l, x_r, ramp=ramp, use_mfa=use_mfa, key_mask=key_mask,
                                              token_mask=self.input_mask(mask, mask_grid))
        self._record(probe, mask, clean)
        left = self._losses(x_l, paired.out_l, t.out_l, mask, score)
        right = self._losses(x_r, paired.out_r, t.out_r, mask, score)
        losses = {k: 0.5 * (left[k] + right[k]) for k in left}
        return PairResult(losses, paired, None)

    def extra_state(self) -> dict[str, Any]:
        """Last step's ``dagman/mask_overlap`` and ``dagman/entropy_s{stage}_h{head}`` (teacher, clean)."""
        return dict(self._stats)
