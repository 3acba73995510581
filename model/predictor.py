"""The JEPA predictor: from context-token features, predict target-encoder features at masked positions.

A narrow ViT: context features are projected to the predictor width, one learned mask token per
mask generator stands in for every target position (so the predictor knows which masking regime it
is solving), RoPE gives both kinds of token their grid positions, and the output is projected back
to the encoder width. Tokens need no sorting: with RoPE, attention depends on positions, not order.
"""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import MLP, Block, init_weights, rescale_residuals
from model.config import ModelConfig
from model.rope import grid_coords, rope_angles


class Predictor(nn.Module):
    """Dense ViT of width `pred_width` mapping [context features, mask tokens] -> target predictions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.pred_width
        self.embed = nn.Linear(cfg.enc_width, p)
        self.mask_tokens = nn.Parameter(torch.zeros(cfg.n_mask_generators, p))  # [G, P], zero init
        self.blocks = nn.ModuleList(
            Block(p, cfg.pred_heads, MLP(p, int(p * cfg.mlp_ratio)), cfg.qkv_bias, cfg.attn_gate)
            for _ in range(cfg.pred_depth)
        )
        self.norm = nn.LayerNorm(p, eps=1e-6)
        self.proj = nn.Linear(p, cfg.enc_width)
        self.register_buffer("coords", grid_coords(cfg.grid), persistent=False)  # [N, 3]
        init_weights(self, cfg.init_std)
        rescale_residuals(self.blocks)

    def forward(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
        """Predict target features for every mask generator at once.

        Args:
            ctx: [G, B, K, D] context-encoder features for generator g's context tokens.
            ctx_idx: [G, B, K] grid indices of those context tokens.
            tgt_idx: [G, B, M] grid indices of the target tokens to predict.

        Returns:
            [G, B, M, D] predictions in the encoder's feature space.
        """
        G, B, K, _ = ctx.shape
        M = tgt_idx.shape[-1]
        n_tokens = self.mask_tokens.shape[0]
        if n_tokens < G:
            raise ValueError(
                f"got {G} mask generators but the predictor has {n_tokens} mask tokens; "
                "build the model and the MaskCollator from the same ModelConfig"
            )
        x = self.embed(ctx)  # [G, B, K, P]
        masks = self.mask_tokens[:G, None, None, :].expand(G, B, M, -1).to(x.dtype)  # [G, B, M, P]
        x = torch.cat((x, masks), dim=2).flatten(0, 1)  # [G*B, K+M, P]
        pos = torch.cat((ctx_idx, tgt_idx), dim=2).flatten(0, 1)  # [G*B, K+M]
        rope = rope_angles(self.coords[pos], self.cfg.pred_width // self.cfg.pred_heads, self.cfg.rope_theta)
        for block in self.blocks:
            x = block(x, rope)
        x = self.proj(self.norm(x[:, K:]))  # [G*B, M, D]
        return x.view(G, B, M, -1)
