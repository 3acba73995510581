"""Heads fitted on frozen features, their losses, and one small trainer for all of them.

Pure torch. The evaluation protocols (linear / attentive probes, ridge-like regression, Cox
survival, modality classification, fusion) differ only in the head and the loss, so one full-batch
or mini-batch AdamW loop (`fit_head`) serves them all; hyper-parameters are the caller's to choose
on a validation split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class StandardizedLinear(nn.Module):
    """Standardise inputs with training statistics, then a linear layer: [N, D] -> [N, n_out]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_out: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.shape[-1], n_out)

    @classmethod
    def fitted_to(cls, x: torch.Tensor, n_out: int) -> StandardizedLinear:
        x = x.float()
        return cls(x.mean(dim=0), x.std(dim=0).clamp_min(1e-6) if len(x) > 1 else torch.ones(x.shape[1]), n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.float() - self.mean) / self.std)


class TokenStandardizer(nn.Module):
    """Per-channel standardisation of tokens [N, T, D] before an attentive probe (training statistics)."""

    def __init__(self, tokens: torch.Tensor, inner: nn.Module) -> None:
        super().__init__()
        flat = tokens.float().reshape(-1, tokens.shape[-1])
        self.register_buffer("mean", flat.mean(dim=0))
        self.register_buffer("std", flat.std(dim=0).clamp_min(1e-6))
        self.inner = inner

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner((tokens.float() - self.mean) / self.std)


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood (Breslow ties), averaged over events.

    Args:
        risk: [N] log-hazard scores (higher = earlier event).
        time: [N] follow-up times.
        event: [N] 1 if the event was observed, 0 if censored.
    """
    order = torch.argsort(time, descending=True)  # risk set of i = everyone with time >= t_i
    r, e = risk[order].float(), event[order].float()
    log_risk_set = torch.logcumsumexp(r, dim=0)  # [N]
    n_events = e.sum().clamp_min(1.0)
    return -((r - log_risk_set) * e).sum() / n_events


def binary_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())


def multiclass_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y.long())


def regression_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred[:, 0], y.float())


def cox_loss(risk: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """target [N, 2] = (time, event)."""
    return cox_partial_likelihood(risk[:, 0], target[:, 0], target[:, 1])


def fit_head(
    head: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """AdamW on (x, target); full batch when batch_size is None (Cox needs the full risk set).

    Args:
        head: maps x[i:j] -> outputs the loss understands.
        x: [N, ...] inputs (features [N, D] or tokens [N, T, D]).
        target: [N] or [N, k] targets.
    Returns:
        The head in eval mode.
    """
    if len(x) != len(target):
        raise ValueError(f"x has {len(x)} rows but target has {len(target)}; they must match")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    head.train()
    n = len(x)
    bs = n if batch_size is None else max(1, min(batch_size, n))
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            loss = loss_fn(head(x[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def predict(head: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Head outputs in eval mode, batch by batch: [N, n_out]."""
    head.eval()
    return (
        torch.cat([head(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
        if len(x)
        else torch.zeros(0, 1)
    )


def fit_linear_cox(
    x: torch.Tensor, time: torch.Tensor, event: torch.Tensor, l2: float, max_iter: int = 100
) -> torch.Tensor:
    """Penalised linear Cox model by L-BFGS on standardised features: returns weights [D] (risk = x @ w).

    Args:
        x: [N, D] standardised features.
        time, event: [N] follow-up and event indicator.
        l2: ridge penalty per subject (loss = partial likelihood + l2 * |w|^2).
    """
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    xd, td, ed = x.double(), time.double(), event.double()
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = cox_partial_likelihood(xd @ w, td, ed) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()
