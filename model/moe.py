"""Mixture-of-experts feed-forward with auxiliary-loss-free load balancing (DeepSeek-V3 style).

Routing: a softmax gate (fp32) scores the routed experts; each token goes to the top-k experts of
score + bias, but the outputs are combined with the *unbiased* scores x route_scale. The bias is a
buffer, never trained by gradients: after each optimizer step `update_bias` nudges it up for
under-used experts and down for over-used ones, so balance is steered without an auxiliary loss
term distorting the JEPA objective. Shared experts (one MLP of n_shared x expert_hidden) see every
token.

Compute: the (token, slot) pairs are sorted by expert and the experts run as one grouped matmul
over the sorted rows (F.grouped_mm with per-expert offsets), so there is no per-expert Python loop
and no host sync. `impl="loop"` is a per-expert reference loop kept for checking and as a fallback.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.blocks import MLP, TRUNC


class MoE(nn.Module):
    """Routed experts (stacked weights) + shared expert, replacing a block's dense MLP."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_routed: int,
        n_shared: int,
        top_k: int,
        *,
        route_scale: float = 4.0,
        bias_update_rate: float = 1e-4,
        bias_clamp: float = 0.3,
        impl: str = "grouped",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_routed:
            raise ValueError(f"top_k={top_k} must be in 1..n_routed={n_routed}")
        if impl not in ("grouped", "loop"):
            raise ValueError(f"impl={impl!r} must be 'grouped' or 'loop'")
        self.dim, self.n_routed, self.top_k, self.impl = dim, n_routed, top_k, impl
        self.route_scale, self.bias_update_rate, self.bias_clamp = route_scale, bias_update_rate, bias_clamp
        self.gate = nn.Linear(dim, n_routed, bias=False)
        # Routed experts as stacked tensors so they can run as one grouped matmul.
        self.w1 = nn.Parameter(torch.empty(n_routed, dim, hidden))  # [E, D, Hd]
        self.b1 = nn.Parameter(torch.zeros(n_routed, hidden))  # [E, Hd]
        self.w2 = nn.Parameter(torch.empty(n_routed, hidden, dim))  # [E, Hd, D]
        self.b2 = nn.Parameter(torch.zeros(n_routed, dim))  # [E, D]
        for w in (self.w1, self.w2):
            nn.init.trunc_normal_(w, std=init_std, a=-TRUNC, b=TRUNC)  # as blocks.init_weights
        self.shared = MLP(dim, n_shared * hidden) if n_shared > 0 else None
        # Routing bias: persistent (checkpointed, copied into the EMA target). Counts: per-step scratch.
        self.register_buffer("expert_bias", torch.zeros(n_routed))
        self.register_buffer("counts", torch.zeros(n_routed), persistent=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate tokens x [T, D] -> (scores [T, E] fp32, expert idx [T, k], combine weights [T, k] fp32)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            scores = F.linear(x.float(), self.gate.weight.float()).softmax(dim=-1)  # [T, E]
        idx = torch.topk(scores + self.expert_bias, self.top_k, dim=-1).indices  # biased selection [T, k]
        weights = scores.gather(-1, idx) * self.route_scale  # unbiased combine [T, k]
        return scores, idx, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.dim)  # [T, D]
        _, idx, weights = self.route(x)
        if self.training:  # the EMA target runs in eval mode and must not count
            self.counts += _histogram(idx.flatten(), self.n_routed).to(self.counts.dtype)
        y = self._routed(x, idx, weights)  # [T, D]
        if self.shared is not None:
            y = y + self.shared(x)
        return y.reshape(shape)

    def _routed(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sum over each token's k experts of weight * expert(x), computed on expert-sorted rows."""
        T, k = idx.shape
        flat = idx.flatten()  # [T*k] expert of each (token, slot)
        order = torch.argsort(flat, stable=True)  # [T*k] rows grouped by expert
        expert = flat[order]  # [T*k]
        rows = x[order // k]  # [T*k, D] the token behind each sorted row
        per_expert = _histogram(flat, self.n_routed)  # [E] rows per expert, stays on device
        dtype = _compute_dtype(x)
        if self.impl == "grouped":
            ys = self._ffn_grouped(rows.to(dtype), expert, per_expert)
        else:
            ys = self._ffn_loop(rows.to(dtype), per_expert)
        ys = ys.float() * weights.flatten()[order].unsqueeze(-1)  # [T*k, D]
        out = torch.empty_like(ys)
        out[order] = ys  # undo the sort: a permutation, so this scatter is deterministic
        return out.view(T, k, self.dim).sum(dim=1).to(x.dtype)  # [T, D]

    def _ffn_grouped(self, rows: torch.Tensor, expert: torch.Tensor, per_expert: torch.Tensor) -> torch.Tensor:
        # On CUDA the fast CUTLASS kernel (sm90/sm100) needs bf16 operands with 16-byte aligned rows (width
        # and hidden multiples of 8, checked by ModelConfig); other dtypes fall back to a per-group loop
        # inside ATen that syncs on `offs`. Under bf16 autocast `rows` arrives in bf16 and the fp32 master
        # weights are cast here, so the training step takes the fast path.
        offs = per_expert.cumsum(0).to(torch.int32)  # [E] end row of each expert's group
        h = F.grouped_mm(rows, self.w1.to(rows.dtype), offs=offs) + self.b1.to(rows.dtype)[expert]
        return F.grouped_mm(F.gelu(h), self.w2.to(rows.dtype), offs=offs) + self.b2.to(rows.dtype)[expert]

    def _ffn_loop(self, rows: torch.Tensor, per_expert: torch.Tensor) -> torch.Tensor:
        # Reference path: .tolist() is a host sync and the loop is serial; do not use on GPU.
        chunks = rows.split(per_expert.tolist())
        outs = [
            F.gelu(c @ self.w1[e].to(c.dtype) + self.b1[e].to(c.dtype)) @ self.w2[e].to(c.dtype)
            + self.b2[e].to(c.dtype)
            for e, c in enumerate(chunks)
        ]
        return torch.cat(outs)

    @torch.no_grad()
    def update_bias(self, counts: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the aux-loss-free balancing rule to the routing bias, then reset the counts.

        err = mean(count) - count; update = err / mean (proportional, centred); bias += rate * update;
        clamp to +-bias_clamp; re-centre (so the spread max - min, which is all routing sees, stays within
        2 x bias_clamp). Over-used experts (count > mean) get a lower bias, so they win fewer top-k
        selections next step. A step with no counted tokens leaves the bias alone.

        Args:
            counts: global per-expert token counts [E]; default: this layer's counts, all-reduced across
                ranks when torch.distributed is initialised.

        Returns:
            [MinVio, MaxVio] = [min(count), max(count)] / mean(count) of the counts used (1.0 when empty).
        """
        if counts is None:
            counts = _all_reduce(self.counts.clone())
        c = counts.float()
        mean = c.mean()
        has_tokens = mean > 0
        safe_mean = mean.clamp_min(1e-6)
        update = (mean - c) / safe_mean
        update = torch.where(has_tokens, update - update.mean(), torch.zeros_like(update))
        self.expert_bias.add_(self.bias_update_rate * update).clamp_(-self.bias_clamp, self.bias_clamp)
        self.expert_bias.sub_(self.expert_bias.mean())
        self.counts.zero_()
        vio = torch.stack((c.min(), c.max())) / safe_mean
        return torch.where(has_tokens, vio, torch.ones_like(vio))


def _histogram(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Occurrences of 0..n-1 in idx, as int64 [n].

    Unlike `torch.bincount`, the output shape does not depend on the data, so torch.compile can keep the
    MoE in one graph; integer atomics make it deterministic on GPU too.
    """
    return torch.zeros(n, dtype=torch.int64, device=idx.device).scatter_add_(0, idx, torch.ones_like(idx))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would use for a matmul on x's device (grouped_mm is not autocast-aware)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _all_reduce(counts: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts


def moe_layers(module: nn.Module) -> list[MoE]:
    """All MoE layers inside `module`, in definition order."""
    return [m for m in module.modules() if isinstance(m, MoE)]


def update_moe_biases(module: nn.Module) -> torch.Tensor:
    """Balance every MoE layer in `module` with one all-reduce of the stacked counts.

    Returns:
        [L, 2] tensor of (MinVio, MaxVio) per MoE layer ([0, 2] when there is none).
    """
    layers = moe_layers(module)
    if not layers:
        return torch.zeros(0, 2)
    counts = _all_reduce(torch.stack([m.counts for m in layers]))  # [L, E]
    return torch.stack([m.update_bias(c) for m, c in zip(layers, counts, strict=True)])


def reset_moe_counts(module: nn.Module) -> None:
    """Discard the counts of a step that was skipped (non-finite loss): no bias update from it."""
    for m in moe_layers(module):
        m.counts.zero_()
