"""JEPA: context encoder + EMA target encoder + predictor, and the one training forward pass.

The context encoder sees only each generator's context tokens; the target encoder (an exponential
moving average of the context encoder, never trained by gradients) sees the whole volume; the
predictor must produce the target encoder's layer-normed features at the masked positions. The EMA
target and the stop-gradient are what keep the representation from collapsing to a constant; the
target feature spread across the batch is logged so a collapse is noticed early.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.encoder import Encoder
from model.loss import jepa_loss
from model.moe import reset_moe_counts, update_moe_biases
from model.predictor import Predictor


class JEPA(nn.Module):
    """Ties the three networks together; `forward(batch)` returns (loss, stats)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context_encoder = Encoder(cfg)
        self.predictor = Predictor(cfg)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> JEPA:
        """Like nn.Module.train, but the target encoder stays in eval mode (its MoE must not count)."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One JEPA step on a MaskCollator batch.

        Args:
            batch: image [B, C, X, Y, Z], fg [B, N], context_idx [G, B, K], target_idx [G, B, M].

        Returns:
            (loss, stats): the scalar loss to backpropagate and detached scalar tensors for logging
            (loss, loss_g<i> per generator, target_std, pred_std). Stats stay on device so the caller
            decides when to pay for a host sync.
        """
        images, ctx_idx, tgt_idx = batch["image"], batch["context_idx"], batch["target_idx"]
        with torch.no_grad():
            h = self.target_encoder(images)  # [B, N, D]
            h = F.layer_norm(h.float(), h.shape[-1:])
        z = self.context_encoder(images, ctx_idx)  # [G, B, K, D]
        pred = self.predictor(z, ctx_idx, tgt_idx)  # [G, B, M, D]
        fg = batch["fg"] if self.cfg.fg_loss else None
        loss, per_generator = jepa_loss(pred, h, tgt_idx, fg, self.cfg.bg_weight)
        stats = {"loss": loss.detach(), "target_std": batch_std(h), "pred_std": batch_std(pred.detach().flatten(0, 1))}
        stats.update({f"loss_g{g}": v for g, v in enumerate(per_generator.detach())})
        return loss, stats

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online, and copy every buffer (MoE routing bias).

        The routing bias is not a gradient-trained parameter, so averaging would lag it behind the
        balance the online encoder has found; it is copied instead.
        """
        target = list(self.target_encoder.parameters())
        online = list(self.context_encoder.parameters())
        torch._foreach_lerp_(target, online, 1.0 - momentum)
        for t, o in zip(self.target_encoder.buffers(), self.context_encoder.buffers(), strict=True):
            t.copy_(o)

    def update_moe_biases(self) -> torch.Tensor:
        """Aux-loss-free balancing step for the context encoder's MoE layers: [L, 2] (MinVio, MaxVio)."""
        return update_moe_biases(self.context_encoder)

    def discard_moe_counts(self) -> None:
        """Forget the routing counts of a skipped step."""
        reset_moe_counts(self.context_encoder)


def batch_std(x: torch.Tensor) -> torch.Tensor:
    """Std across the batch (dim 0) averaged over tokens and channels; across tokens when B == 1.

    Near zero means every sample maps to the same features: a representation collapse.
    """
    dim = 0 if x.shape[0] > 1 else 1
    return x.float().std(dim=dim).mean()


def check_collapse(target_std: float, threshold: float) -> bool:
    """Warn (and return True) when the target features barely vary across the batch."""
    if target_std < threshold:
        warnings.warn(
            f"target feature std across the batch is {target_std:.2e} < {threshold:.0e}: the representation "
            "may be collapsing; check the EMA momentum, the learning rate and that the batch holds distinct volumes",
            RuntimeWarning,
            stacklevel=2,
        )
        return True
    return False
