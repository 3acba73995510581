"""Frozen-encoder probes: feature extraction, a logistic probe and an attentive (cross-attention) probe.

Pure torch (no sklearn) so the model package stays dependency-light; the caller computes AUROC and
confidence intervals from the returned scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import MLP


def extract_tokens(encoder: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """All token features of a frozen encoder: images [N, C, X, Y, Z] -> [N, T, D] float32 on CPU."""
    return _encode(encoder, images, batch_size, pool=False)


def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Mean-pooled token features: images [N, C, X, Y, Z] -> [N, D] float32 on CPU."""
    return _encode(encoder, images, batch_size, pool=True)


@torch.no_grad()
def _encode(encoder: nn.Module, images: torch.Tensor, batch_size: int, pool: bool) -> torch.Tensor:
    """Run the encoder in eval mode, batch by batch, on the encoder's device (restoring its mode)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for i in range(0, len(images), batch_size):
            tokens = encoder(images[i : i + batch_size].to(device)).float()  # [b, T, D]
            out.append((tokens.mean(dim=1) if pool else tokens).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


class LinearProbe(nn.Module):
    """Standardise features with training statistics, then one linear layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.n_classes = n_classes
        self.linear = nn.Linear(mean.shape[-1], 1 if n_classes == 2 else n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: [N, 1] for a binary task, [N, C] otherwise."""
        return self.linear((x.float() - self.mean) / self.std)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """P(class 1) [N] for a binary task, class probabilities [N, C] otherwise."""
        logits = self(x)
        return torch.sigmoid(logits[:, 0]) if self.n_classes == 2 else logits.softmax(dim=-1)


def fit_logistic_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> LinearProbe:
    """Full-batch AdamW logistic regression on frozen features (binary or multiclass).

    Args:
        train_x: [N, D] features.
        train_y: [N] integer labels 0..C-1.
        epochs: full-batch optimisation steps.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (an L2-like regulariser).
        seed: initialisation seed.

    Returns:
        A fitted LinearProbe in eval mode; `probe.scores(x)` gives probabilities.
    """
    x, y = train_x.float(), train_y.long()
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected train_x [N, D] and train_y [N], got {list(x.shape)} and {list(y.shape)}")
    if y.min() < 0:
        raise ValueError(f"labels must be 0..C-1, got min label {int(y.min())}")
    n_classes = max(2, int(y.max()) + 1)
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    probe = LinearProbe(x.mean(dim=0), x.std(dim=0).clamp_min(1e-6), n_classes)
    torch.set_rng_state(gen_state)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        logits = probe(x)
        if n_classes == 2:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
        else:
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return probe.eval()


class AttentiveProbe(nn.Module):
    """A learned query cross-attends over frozen tokens, then an MLP and a linear head.

    Better than mean pooling when the signal is local (a lesion in a few patches): the query learns
    where to look.
    """

    def __init__(self, dim: int, n_out: int = 1, heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"AttentiveProbe dim={dim} is not divisible by heads={heads}; pick a divisor")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T, D] -> logits [B, n_out]."""
        B, T, D = tokens.shape
        hd = D // self.heads
        q = self.q(self.query).view(1, self.heads, 1, hd).expand(B, -1, -1, -1)  # [B, H, 1, hd]
        kv = self.kv(self.norm_kv(tokens)).view(B, T, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [B, H, 1, hd]
        x = self.query + self.proj(attn.transpose(1, 2).reshape(B, 1, D))  # [B, 1, D]
        x = x + self.mlp(self.norm_mlp(x))
        return self.head(self.norm_out(x[:, 0]))  # [B, n_out]
