"""Feature extraction and probes on frozen features."""

from __future__ import annotations

import pytest
import torch

from model.encoder import Encoder
from model.probes import AttentiveProbe, extract_features, extract_tokens, fit_logistic_probe
from tests.model import TINY, single_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def test_extract_features_mean_pools_tokens_and_restores_mode():
    torch.manual_seed(0)
    enc = Encoder(TINY).train()
    images = torch.rand(3, 1, *TINY.img_size)
    feats = extract_features(enc, images, batch_size=2)
    tokens = extract_tokens(enc, images, batch_size=2)
    assert feats.shape == (3, TINY.enc_width) and tokens.shape == (3, 576, TINY.enc_width)
    torch.testing.assert_close(feats, tokens.mean(dim=1))
    assert enc.training and not feats.requires_grad


def test_logistic_probe_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 8, generator=gen) + 3.0 * y[:, None] * torch.tensor([1.0] + [0.0] * 7)
    probe = fit_logistic_probe(x, y, epochs=200, lr=0.05, weight_decay=0.0, seed=0)
    scores = probe.scores(x)
    assert scores.shape == (40,)
    assert scores[y == 1].min() > scores[y == 0].max()  # AUROC 1 on separable data


def test_logistic_probe_is_seeded_and_handles_multiclass():
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    a = fit_logistic_probe(x, y, epochs=5, lr=0.01, weight_decay=0.0, seed=1).scores(x)
    b = fit_logistic_probe(x, y, epochs=5, lr=0.01, weight_decay=0.0, seed=1).scores(x)
    assert a.shape == (30, 3) and torch.equal(a, b)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(30))
    with pytest.raises(ValueError, match="train_y \\[N\\]"):
        fit_logistic_probe(x, y[:5])


def test_attentive_probe_shapes_and_gradients():
    probe = AttentiveProbe(48, n_out=2, heads=16)
    tokens = torch.randn(3, 576, 48, requires_grad=True)
    out = probe(tokens)
    assert out.shape == (3, 2)
    out.sum().backward()
    assert tokens.grad is not None and all(p.grad is not None for p in probe.parameters())
    with pytest.raises(ValueError, match="not divisible by heads=16"):
        AttentiveProbe(40)
