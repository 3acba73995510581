"""Evaluation heads and baseline networks: Cox loss, attentive probe, small ResNet, CNN-MAE."""

from __future__ import annotations

import math

import torch

from model.cnn import CNNMAE, ResNet3d
from model.heads import cox_partial_likelihood, fit_linear_cox
from model.probes import AttentiveProbe


def test_cox_partial_likelihood_known_value():
    # times 1 < 2 < 3, all events: -[r1 - log(e^r1+e^r2+e^r3)] - [r2 - log(e^r2+e^r3)] - [r3 - r3], / 3
    r = torch.tensor([0.5, -0.2, 0.1])
    t = torch.tensor([1.0, 2.0, 3.0])
    e = torch.tensor([1.0, 1.0, 1.0])
    expected = -(
        (0.5 - math.log(sum(math.exp(x) for x in (0.5, -0.2, 0.1)))) + (-0.2 - math.log(math.exp(-0.2) + math.exp(0.1)))
    )
    assert torch.isclose(cox_partial_likelihood(r, t, e), torch.tensor(expected / 3), atol=1e-6)
    # censored subjects contribute to risk sets only
    assert torch.isclose(
        cox_partial_likelihood(r, t, torch.tensor([1.0, 1.0, 0.0])), torch.tensor(expected / 2), atol=1e-6
    )


def test_linear_cox_recovers_the_direction_of_the_hazard():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g)
    risk = 1.5 * x[:, 0]  # only feature 0 matters
    time = torch.distributions.Exponential(torch.exp(risk)).sample()
    w = fit_linear_cox(x, time, torch.ones(300), l2=1e-3)
    assert w[0] > 1.0 and w[1:].abs().max() < 0.3


def test_attentive_probe_16_heads_shapes():
    probe = AttentiveProbe(48, n_out=3, heads=16)
    assert probe(torch.randn(5, 20, 48)).shape == (5, 3)


def test_resnet_and_mae_shapes_and_mae_learns():
    torch.manual_seed(0)
    net = ResNet3d(n_out=2, width=4, downsample=4)
    x = torch.rand(2, 1, 64, 64, 64)
    assert net(x).shape == (2, 2) and net.features(x).shape == (2, 32)
    mae = CNNMAE(ResNet3d(width=4, downsample=4))
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(5):
        loss = mae.loss(x, generator=gen)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(mae.loss(x, generator=gen))
    assert math.isfinite(first) and after < first
