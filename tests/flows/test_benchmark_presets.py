"""The CPU benchmark's pretraining recipe must be able to show pretraining helping, and its statistics stay honest."""

from __future__ import annotations

from flows.benchmark import BENCH_PRESETS
from model.presets import get_preset
from tasks.evaluation.config import get_eval_preset


def test_cpu_benchmark_target_encoder_is_not_its_initialisation():
    # The evaluated encoder is the EMA target: after the run, the share of its initial weights left in it is
    # ema ** steps. The base recipe's 0.99925 over a few hundred steps left ~90 % (the encoder compared with
    # random init was nearly random init); the benchmark recipe must leave under 10 %.
    p = BENCH_PRESETS["cpu"]
    model_cfg, train_cfg = get_preset(p.pretrain_preset)
    steps = p.pretrain_steps or train_cfg.steps
    assert train_cfg.ema**steps < 0.1, (train_cfg.ema, steps)
    assert 0 < train_cfg.warmup_steps <= 0.1 * steps  # warmup a few % of the run, not most of it
    assert model_cfg == get_preset("tiny").model  # same toy network as the tests and the demo
    assert get_preset("base").train.ema == 0.99925  # the production recipe is untouched


def test_cpu_benchmark_keeps_the_bootstrap_and_a_pool_disjoint_from_labelled_subjects():
    p = BENCH_PRESETS["cpu"]
    assert get_eval_preset(p.eval_preset).n_boot >= 1000
    n_pool = round(p.subjects * p.pool_fraction)
    assert 0 < n_pool < p.subjects
