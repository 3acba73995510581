"""The JEPA objective: L1 between predictions and layer-normed target features, foreground-weighted."""

from __future__ import annotations

import torch


def jepa_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    target_idx: torch.Tensor,
    fg: torch.Tensor | None = None,
    bg_weight: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute error at the target tokens, weighting tissue over air.

    Token weight is bg_weight + (1 - bg_weight) * foreground (1.0 on tissue, 0.1 on background), then
    normalised to mean 1 per sample so the loss scale (and effective learning rate) does not depend
    on how much of a sample's target set happens to be background. Without `fg` every token weighs 1.

    Args:
        pred: [G, B, M, D] predictor outputs, one slice per mask generator.
        target: [B, N, D] target-encoder features for all tokens, already layer-normed.
        target_idx: [G, B, M] grid indices the predictions refer to.
        fg: [B, N] bool foreground map, or None for a uniform weight.
        bg_weight: weight of a background token relative to a foreground one.

    Returns:
        (loss, per_generator): the scalar loss averaged over generators, and the [G] per-generator losses.
    """
    G, B, M, D = pred.shape
    tgt = torch.gather(
        target.unsqueeze(0).expand(G, -1, -1, -1), 2, target_idx.unsqueeze(-1).expand(-1, -1, -1, D)
    )  # [G, B, M, D]
    per_token = (pred.float() - tgt.float()).abs().mean(dim=-1)  # [G, B, M]
    if fg is None:
        weight = torch.ones_like(per_token)
    else:
        fg_at = torch.gather(fg.float().unsqueeze(0).expand(G, -1, -1), 2, target_idx)  # [G, B, M]
        weight = bg_weight + (1.0 - bg_weight) * fg_at
        weight = weight / weight.mean(dim=-1, keepdim=True).clamp_min(1e-6)  # mean 1 per sample
    per_generator = (per_token * weight).mean(dim=(1, 2))  # [G]
    return per_generator.mean(), per_generator
