"""The foreground-weighted L1 JEPA loss."""

from __future__ import annotations

import pytest
import torch

from model.loss import jepa_loss


def test_loss_is_zero_when_predictions_hit_the_targets():
    target = torch.randn(2, 10, 4)
    idx = torch.tensor([[[1, 3, 5], [0, 2, 9]]])  # [G=1, B=2, M=3]
    pred = torch.gather(target.unsqueeze(0), 2, idx.unsqueeze(-1).expand(-1, -1, -1, 4))
    loss, per_gen = jepa_loss(pred, target, idx, torch.ones(2, 10, dtype=torch.bool))
    assert loss.item() == 0.0 and per_gen.shape == (1,)


def test_foreground_tokens_weigh_ten_times_background_tokens_normalised_per_sample():
    target = torch.zeros(1, 2, 3)
    idx = torch.tensor([[[0, 1]]])
    pred = torch.tensor([[[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]])  # error 1 on token 0, 0 on token 1
    fg = torch.tensor([[True, False]])
    loss, _ = jepa_loss(pred, target, idx, fg, bg_weight=0.1)
    # weights (1.0, 0.1) / mean 0.55 -> loss = (1.0 / 0.55 * 1 + 0.1 / 0.55 * 0) / 2
    assert loss.item() == pytest.approx(1.0 / 0.55 / 2)
    swapped, _ = jepa_loss(pred, target, idx, ~fg, bg_weight=0.1)  # the error now sits on background
    assert swapped.item() == pytest.approx(0.1 / 0.55 / 2)


def test_uniform_weights_without_foreground_map_give_plain_l1():
    torch.manual_seed(0)
    target = torch.randn(2, 8, 4)
    idx = torch.stack([torch.randperm(8)[:5] for _ in range(6)]).view(3, 2, 5)
    pred = torch.randn(3, 2, 5, 4)
    loss, per_gen = jepa_loss(pred, target, idx, None)
    gathered = torch.gather(target.unsqueeze(0).expand(3, -1, -1, -1), 2, idx.unsqueeze(-1).expand(-1, -1, -1, 4))
    torch.testing.assert_close(per_gen, (pred - gathered).abs().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(loss, per_gen.mean())  # averaged over generators


def test_per_sample_normalisation_makes_all_background_samples_count_fully():
    target = torch.zeros(1, 4, 2)
    idx = torch.tensor([[[0, 1]]])
    pred = torch.ones(1, 1, 2, 2)
    all_bg, _ = jepa_loss(pred, target, idx, torch.zeros(1, 4, dtype=torch.bool))
    all_fg, _ = jepa_loss(pred, target, idx, torch.ones(1, 4, dtype=torch.bool))
    assert all_bg.item() == pytest.approx(all_fg.item()) == pytest.approx(1.0)
