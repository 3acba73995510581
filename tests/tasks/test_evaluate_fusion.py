"""Learned fusion (gated late fusion, gated-attention MIL, product of experts) on planted signals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tasks.evaluation import fusion
from tasks.evaluation.config import get_eval_preset
from tasks.evaluation.heads import select_and_score
from tasks.evaluation.stats import auroc, mae

CFG = replace(get_eval_preset("tiny"), n_boot=50)
PROTOCOLS = tuple(fusion.NETWORKS)


def _bags(n: int, seed: int, m: int = 3, d: int = 12) -> torch.Tensor:
    """[n, M, D] per-modality features; each modality has its own offset, as contrasts do."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, d, generator=g)
    for k in range(m):
        x[:, k, 1 + k] += 3.0
    return x


def _signal(x: torch.Tensor) -> np.ndarray:
    return 2 * x[:, 2, 0].numpy()  # only the last modality (think FLAIR) carries it


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_fusion_finds_a_signal_carried_by_one_modality(protocol):
    x_tr, x_va, x_te = _bags(120, 0), _bags(60, 1), _bags(80, 2)
    fit = select_and_score(
        "binary",
        (x_tr, {"y": (_signal(x_tr) > 0).astype(int)}),
        (x_va, {"y": (_signal(x_va) > 0).astype(int)}),
        x_te,
        CFG,
        fit=fusion.fitter(protocol),
    )
    assert fit.test_scores.shape == (80,) and np.isfinite(fit.test_scores).all()
    assert auroc((_signal(x_te) > 0).astype(int), fit.test_scores) > 0.9


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_fusion_regresses_and_classifies_into_the_right_shapes(protocol):
    x_tr, x_va, x_te = _bags(100, 3), _bags(40, 4), _bags(30, 5)
    reg = select_and_score(
        "regression",
        (x_tr, {"y": 50 + 10 * _signal(x_tr)}),
        (x_va, {"y": 50 + 10 * _signal(x_va)}),
        x_te,
        CFG,
        fit=fusion.fitter(protocol),
    )
    y_te = 50 + 10 * _signal(x_te)
    assert reg.test_scores.shape == (30,) and mae(y_te, reg.test_scores) < 0.5 * mae(y_te, np.full(30, y_te.mean()))
    multi = select_and_score(
        "multiclass",
        (x_tr, {"y": np.digitize(_signal(x_tr), [-1, 1])}),
        (x_va, {"y": np.digitize(_signal(x_va), [-1, 1])}),
        x_te,
        CFG,
        fit=fusion.fitter(protocol),
    )
    assert multi.test_scores.shape == (30, 3) and np.allclose(multi.test_scores.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_networks_map_bags_to_outputs_and_refuse_flat_features(protocol):
    net = fusion.NETWORKS[protocol](3, 12, 2)
    assert net(_bags(5, 0)).shape == (5, 2)
    with pytest.raises(ValueError, match="per-modality features"):
        fusion.fitter(protocol)("binary", torch.zeros(4, 12), {"y": np.array([0, 1, 0, 1])}, 1.0, CFG, False, 1)


def test_attention_and_gate_weights_sum_to_one_over_modalities():
    x = _bags(6, 0)
    mil = fusion.GatedAttentionMIL(3, 12, 1)
    a = mil.attention(mil.embed(x))
    assert a.shape == (6, 3) and torch.allclose(a.sum(1), torch.ones(6))
    gated = fusion.GatedLateFusion(3, 12, 1)
    per = torch.einsum("nmd,mdo->nmo", x, gated.experts) + gated.expert_bias
    assert torch.allclose(gated(x), per.mean(1), atol=1e-6)  # a fresh gate is uniform: averaged logits


def test_unknown_protocol_and_the_preset_switches():
    with pytest.raises(ValueError, match="unknown fusion protocol 'fusion_x'"):
        fusion.fitter("fusion_x")
    assert fusion.enabled(CFG) == list(PROTOCOLS)
    assert fusion.enabled(replace(CFG, run_fusion_mil=False)) == ["fusion_gated", "fusion_poe"]
