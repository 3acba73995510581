"""The JEPA module: forward/backward, stop-gradient into the target, EMA, collapse warning."""

from __future__ import annotations

import pytest
import torch

from model.jepa import JEPA, check_collapse
from model.moe import moe_layers
from tests.model import TINY, single_thread, tiny_batch


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    return tiny_batch(2)


def test_forward_returns_a_scalar_loss_and_detached_stats(batch):
    torch.manual_seed(0)
    model = JEPA(TINY).train()
    loss, stats = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert {"loss", "target_std", "pred_std", "loss_g0", "loss_g1", "loss_g2"} <= set(stats)
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())
    assert stats["target_std"] > 0


def test_gradients_reach_context_encoder_and_predictor_but_never_the_target(batch):
    torch.manual_seed(0)
    model = JEPA(TINY).train()
    assert not model.target_encoder.training  # stays in eval mode through model.train()
    loss, _ = model(batch)
    loss.backward()
    assert all(p.grad is not None for p in model.context_encoder.parameters())
    assert all(p.grad is not None for n, p in model.predictor.named_parameters())
    assert all(not p.requires_grad and p.grad is None for p in model.target_encoder.parameters())


def test_only_the_context_encoder_counts_routed_tokens(batch):
    torch.manual_seed(0)
    model = JEPA(TINY).train()
    model(batch)
    G, B, K = batch["context_idx"].shape
    assert all(m.counts.sum() == G * B * K * TINY.top_k for m in moe_layers(model.context_encoder))
    assert all(m.counts.sum() == 0 for m in moe_layers(model.target_encoder))


def test_ema_moves_target_towards_online_weights_and_copies_buffers():
    torch.manual_seed(0)
    model = JEPA(TINY)
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
        for m in moe_layers(model.context_encoder):
            m.expert_bias.copy_(torch.linspace(-0.1, 0.1, m.n_routed))
    online = [p.detach().clone() for p in model.context_encoder.parameters()]
    before = [p.detach().clone() for p in model.target_encoder.parameters()]
    model.ema_update(0.9)
    for t, o, b in zip(model.target_encoder.parameters(), online, before, strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    for t, o in zip(moe_layers(model.target_encoder), moe_layers(model.context_encoder), strict=True):
        assert torch.equal(t.expert_bias, o.expert_bias)
    model.ema_update(0.0)
    for t, o in zip(model.target_encoder.parameters(), online, strict=True):
        assert torch.equal(t, o)


def test_collapse_check_warns_below_threshold():
    with pytest.warns(RuntimeWarning, match="collapsing"):
        assert check_collapse(1e-5, 1e-3)
    assert not check_collapse(0.5, 1e-3)
