"""MoE routing, batched expert compute and the aux-loss-free bias update."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from model.encoder import Encoder
from model.moe import MoE, moe_layers, reset_moe_counts, update_moe_biases
from tests.model import TINY, single_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


D, HIDDEN, E, K = 16, 8, 6, 2


def make_moe(impl: str = "grouped", **kwargs) -> MoE:
    torch.manual_seed(0)
    moe = MoE(D, HIDDEN, E, 1, K, impl=impl, **kwargs)
    with torch.no_grad():  # non-zero biases and a sharper gate make the reference comparison meaningful
        moe.b1.normal_()
        moe.b2.normal_()
        moe.gate.weight.normal_()
    return moe


def naive_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the definition the batched path must reproduce."""
    scores = F.linear(x.float(), moe.gate.weight.float()).softmax(-1)
    out = []
    for t in range(x.shape[0]):
        chosen = torch.topk(scores[t] + moe.expert_bias, moe.top_k).indices
        y = moe.shared(x[t])
        for e in chosen.tolist():
            h = F.gelu(x[t] @ moe.w1[e] + moe.b1[e]) @ moe.w2[e] + moe.b2[e]
            y = y + scores[t, e] * moe.route_scale * h
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_batched_experts_match_naive_per_token_reference(impl):
    moe = make_moe(impl)
    with torch.no_grad():
        moe.expert_bias.copy_(torch.linspace(-0.2, 0.2, E))
    x = torch.randn(3, 7, D)  # [B, N, D]
    torch.testing.assert_close(moe(x), naive_reference(moe, x.view(-1, D)).view(3, 7, D), atol=1e-5, rtol=1e-5)


def test_grouped_and_loop_paths_have_the_same_gradients():
    x = torch.randn(40, D)
    grads = []
    for impl in ("grouped", "loop"):
        moe = make_moe(impl)
        moe(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in moe.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_routing_selects_top_k_of_score_plus_bias_but_combines_unbiased_scores():
    moe = make_moe()
    x = torch.randn(50, D)
    with torch.no_grad():
        moe.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2.0]))  # bias forces expert 5 in
    scores, idx, weights = moe.route(x)
    assert (idx == 5).any(dim=1).all()
    torch.testing.assert_close(idx, torch.topk(scores + moe.expert_bias, K).indices)
    torch.testing.assert_close(weights, scores.gather(1, idx) * 4.0)  # no bias in the weights
    assert scores.dtype == torch.float32


def test_counts_accumulate_only_in_training_mode():
    moe = make_moe()
    x = torch.randn(30, D)
    moe.train()(x)
    moe.train()(x)
    assert moe.counts.sum().item() == 2 * 30 * K
    moe.eval()(x)
    assert moe.counts.sum().item() == 2 * 30 * K


def test_update_bias_lowers_overloaded_and_raises_underloaded_experts():
    moe = make_moe(bias_update_rate=1e-2)
    counts = torch.tensor([60.0, 10.0, 10.0, 10.0, 5.0, 5.0])  # mean 16.67
    vio = moe.update_bias(counts)
    bias = moe.expert_bias
    assert bias[0] < 0 < bias[4] and bias[1] > 0
    assert bias[4] == pytest.approx(bias[5].item())
    assert bias.mean().abs() < 1e-7
    mean = counts.mean()
    torch.testing.assert_close(vio, torch.stack((counts.min(), counts.max())) / mean)
    expected = 1e-2 * (mean - counts) / mean  # already centred: sum(mean - count) = 0
    torch.testing.assert_close(bias, expected - expected.mean())


def test_update_bias_clamps_recentres_and_resets_counts():
    moe = make_moe(bias_update_rate=10.0, bias_clamp=0.3)
    moe.counts += torch.tensor([100.0, 0, 0, 0, 0, 0])
    moe.update_bias()
    assert moe.counts.sum() == 0
    assert moe.expert_bias.mean().abs() < 1e-6
    # Clamping bounds each entry to +-0.3; re-centring then shifts all entries by the same amount, so the
    # spread (which is what routing sees) stays <= 0.6 even though single entries may exceed 0.3.
    spread = moe.expert_bias.max() - moe.expert_bias.min()
    assert spread == pytest.approx(0.6)
    torch.testing.assert_close(moe.expert_bias, torch.tensor([-0.5, 0.1, 0.1, 0.1, 0.1, 0.1]))


def test_update_bias_without_tokens_changes_nothing():
    moe = make_moe()
    vio = moe.update_bias(torch.zeros(E))
    assert torch.equal(moe.expert_bias, torch.zeros(E))
    assert vio.tolist() == [1.0, 1.0]


def test_balancing_drives_routing_towards_uniform():
    """Repeated updates on fixed, skewed tokens: MaxVio falls as the bias steers tokens off busy experts."""
    torch.manual_seed(0)
    moe = MoE(D, HIDDEN, E, 1, K, bias_update_rate=0.01).train()
    with torch.no_grad():
        moe.gate.weight.normal_(0.0, 0.3)
    x = torch.randn(256, D) + 1.0  # a shared offset makes some experts popular with every token
    with torch.no_grad():
        moe(x)
        first = moe.update_bias()
        for _ in range(80):
            moe(x)
            last = moe.update_bias()
    assert first[1] > 1.5 and last[1] < 1.2, (first, last)


def test_update_moe_biases_covers_every_layer_of_an_encoder():
    enc = Encoder(TINY).train()
    assert len(moe_layers(enc)) == len(TINY.moe_layers)
    enc(torch.rand(1, 1, *TINY.img_size))
    assert all(m.counts.sum() == 576 * TINY.top_k for m in moe_layers(enc))
    vio = update_moe_biases(enc)
    assert vio.shape == (len(TINY.moe_layers), 2)
    assert all(m.counts.sum() == 0 for m in moe_layers(enc))
    enc(torch.rand(1, 1, *TINY.img_size))
    reset_moe_counts(enc)
    assert all(m.counts.sum() == 0 for m in moe_layers(enc))


def test_counts_are_all_reduced_when_distributed(tmp_path):
    """Single-rank gloo group: exercises the all-reduce path (sum over one rank = the local counts)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        moe = make_moe(bias_update_rate=1e-2)
        moe.counts += torch.tensor([6.0, 1, 1, 1, 1, 2])
        vio = moe.update_bias()
        assert vio.tolist() == pytest.approx([0.5, 3.0])
        assert moe.expert_bias[0] < 0
    finally:
        dist.destroy_process_group()
