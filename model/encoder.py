"""The ViT encoder (used twice: as the context encoder and, EMA-averaged, as the target encoder).

Patch embed -> (optionally) keep a subset of tokens -> blocks with 3D RoPE -> LayerNorm. There is
no cls token and no position table: positions enter only through RoPE, so dropping tokens is a
gather and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import MLP, Block, init_weights, rescale_residuals
from model.config import ModelConfig
from model.moe import MoE
from model.patch_embed import PatchEmbed3D
from model.rope import grid_coords, rope_angles


class Encoder(nn.Module):
    """ViT over the token grid, MoE feed-forward in `cfg.moe_layers` when `cfg.use_moe`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.enc_width
        self.patch_embed = PatchEmbed3D(cfg.img_size, cfg.patch, cfg.in_chans, d)
        self.blocks = nn.ModuleList(
            Block(d, cfg.enc_heads, self._feed_forward(cfg, i), cfg.qkv_bias, cfg.attn_gate)
            for i in range(cfg.enc_depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.register_buffer("coords", grid_coords(cfg.grid), persistent=False)  # [N, 3]
        init_weights(self, cfg.init_std)  # (MoE's stacked expert weights initialise themselves)
        rescale_residuals(self.blocks)

    @staticmethod
    def _feed_forward(cfg: ModelConfig, layer: int) -> nn.Module:
        if cfg.use_moe and layer in cfg.moe_layers:
            return MoE(
                cfg.enc_width,
                cfg.expert_hidden,
                cfg.n_routed,
                cfg.n_shared,
                cfg.top_k,
                route_scale=cfg.route_scale,
                bias_update_rate=cfg.bias_update_rate,
                bias_clamp=cfg.bias_clamp,
                impl=cfg.moe_impl,
                init_std=cfg.init_std,
            )
        return MLP(cfg.enc_width, int(cfg.enc_width * cfg.mlp_ratio))

    def forward(self, images: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Encode all tokens, or only the tokens at `idx`.

        Args:
            images: [B, C, X, Y, Z] volumes on the model grid.
            idx: None for all N tokens, [B, K] token indices to keep, or [G, B, K] for G mask
                generators at once (the patch embedding is then computed once and shared).

        Returns:
            [B, N, D], [B, K, D] or [G, B, K, D] features.
        """
        x = self.patch_embed(images)  # [B, N, D]
        B, N, D = x.shape
        if idx is None:
            return self._run(x, self.coords)  # coords [N, 3] broadcast over the batch
        lead = idx.shape[:-2]  # () or (G,)
        if idx.shape[-2] != B:
            raise ValueError(f"idx {list(idx.shape)} must be [B, K] or [G, B, K] with B={B}")
        flat_idx = idx.reshape(-1, idx.shape[-1])  # [G*B, K]
        x = x.repeat(flat_idx.shape[0] // B, 1, 1)  # [G*B, N, D], generator-major like flat_idx
        x = torch.gather(x, 1, flat_idx.unsqueeze(-1).expand(-1, -1, D))  # [G*B, K, D]
        out = self._run(x, self.coords[flat_idx])  # coords [G*B, K, 3]
        return out.reshape(*lead, B, idx.shape[-1], D)

    def _run(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        rope = rope_angles(coords, self.cfg.enc_width // self.cfg.enc_heads, self.cfg.rope_theta)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)


def build_encoder(cfg: ModelConfig) -> Encoder:
    """A freshly initialised encoder (e.g. the random-init baseline every evaluation reports)."""
    return Encoder(cfg)
