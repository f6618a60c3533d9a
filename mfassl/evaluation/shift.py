"""The inference shift: how much Mirror-Fusion Attention changes the layer-l tokens of a mirror pair.

MFA runs in pretraining only; at inference the encoder runs without it. The relative shift
``||z - p||_F / ||p||_F`` of the fused tokens ``z`` against the unfused ones ``p`` (over the valid tokens of
both halves, per sample) says how far the features a downstream model sees are from those pretraining
optimised. With the learned gates near 0 the shift is near 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["inference_shift"]


@torch.no_grad()
def inference_shift(backbone: nn.Module, x_l: torch.Tensor, x_r: torch.Tensor,
                    key_mask: torch.Tensor | None = None,
                    return_gates: bool = False) -> dict[str, Any] | tuple[dict[str, Any], torch.Tensor | None]:
    """The relative change MFA makes to the layer-l tokens of mirror pairs.

    Args:
        backbone: an MFA backbone (``forward_paired`` and an ``mfa`` block).
        x_l, x_r: ``(B, C, *M)`` the mirror pair's halves.
        key_mask: ``(B, N)`` bool, True where a token is valid (also restricts the norms).
        return_gates: also return the ``(B, N)`` left-half gates (None without MFA), e.g. for gate maps.

    Returns:
        ``{"relative_shift": mean over the batch, "per_sample": [...], "gate_mean": mean gate over valid
        tokens of both halves}``; a backbone without MFA gives 0 and says so under ``"note"``.
    """
    mfa = getattr(backbone, "mfa", None)
    if mfa is None or not hasattr(backbone, "forward_paired"):
        b = x_l.shape[0]
        out = {"relative_shift": 0.0, "per_sample": [0.0] * b, "gate_mean": 0.0,
               "note": "the backbone has no MFA block"}
        return (out, None) if return_gates else out
    was_training = backbone.training
    backbone.eval()
    pre = backbone.forward_paired(x_l, x_r, use_mfa=False, key_mask=key_mask)
    p_l, p_r = pre.pre_l, pre.pre_r
    z_l, z_r, g_l, g_r = mfa(p_l, p_r, ramp=1.0, key_mask=key_mask)
    backbone.train(was_training)
    valid = torch.ones(p_l.shape[:2], dtype=torch.bool, device=p_l.device) if key_mask is None else key_mask.bool()
    w = valid[..., None].float()
    num = (((z_l - p_l) * w) ** 2).sum((1, 2)) + (((z_r - p_r) * w) ** 2).sum((1, 2))
    den = ((p_l * w) ** 2).sum((1, 2)) + ((p_r * w) ** 2).sum((1, 2))
    per = (num.sqrt() / den.sqrt().clamp_min(1e-12)).float().cpu()
    gates = torch.cat([g_l[valid], g_r[valid]]).float()
    out = {"relative_shift": float(per.mean()), "per_sample": per.tolist(),
           "gate_mean": float(gates.mean()) if gates.numel() else float("nan")}
    return (out, g_l) if return_gates else out
