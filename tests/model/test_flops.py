"""The analytic FLOP count used for MFU equals what torch's FlopCounterMode counts in a real training step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.flops import train_step_flops
from model.jepa import JEPA
from model.masks import MaskCollator
from model.presets import ablation_ladder, count_parameters, get_preset
from tests.model import TINY, single_thread, tiny_batch


@pytest.mark.parametrize("rung", ["fg", "vjepa2"])  # MoE with 3 generators; dense with 2 generators
def test_analytic_flops_match_the_counted_matmuls_of_a_training_step(rung):
    # FlopCounterMode counts matmuls, convolutions and attention only when they go through ops it knows:
    # the per-expert loop (not grouped_mm) and the math attention kernel (not the fused CPU one).
    cfg = dataclasses.replace(ablation_ladder(TINY)[rung], moe_impl="loop")
    batch = tiny_batch(2)
    if not cfg.multiscale_masks:
        items = [{"image": image, "fg": fg} for image, fg in zip(batch["image"], batch["fg"], strict=True)]
        batch = MaskCollator(cfg)(items, step=0)
    torch.manual_seed(0)
    model = JEPA(cfg).train()
    with single_thread(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = model(batch)
        loss.backward()
    assert counter.get_total_flops() == train_step_flops(cfg).total * 2  # batch of 2


def test_base_step_is_close_to_six_times_active_parameters_times_tokens():
    """Scale check: '6 x params x tokens' per trained network (2 x for the forward-only target) plus attention."""
    cfg = get_preset("base").model
    flops = train_step_flops(cfg)
    n = count_parameters(cfg)
    G, N, K = cfg.n_mask_generators, cfg.n_tokens, cfg.n_context
    rule = 2 * n.encoder_active * N + 6 * n.encoder_active * G * K + 6 * n.predictor * G * N
    assert 1.0 < flops.total / rule < 1.15  # attention scores add a few %, patch embed reuse saves a little
    assert flops.predictor > flops.context_encoder > flops.target_encoder  # G x 576 tokens through the predictor
