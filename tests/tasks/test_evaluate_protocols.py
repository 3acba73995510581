"""Each evaluation protocol on a tiny generated cohort; planted signals found; selection blind to test labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tasks.evaluation.config import get_eval_preset
from tasks.evaluation.heads import select_and_score
from tasks.evaluation.protocols import TaskSpec, default_tasks
from tasks.evaluation.runner import BASELINES, evaluate, finish, prepare, run_protocol
from tasks.evaluation.stats import auroc, c_index, mae
from tests.tasks.evaluation_fixture import tiny_cohort

CFG = replace(
    get_eval_preset("tiny"), n_boot=50, finetune_max_train=2, fewshot_ks=(2,), attn_epochs=5, cnn_epochs=1, mae_steps=2
)


def _split(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression", "survival"])
def test_linear_heads_find_a_planted_signal(kind):
    x_tr, x_va, x_te = _split(120, 16, 0), _split(60, 16, 1), _split(80, 16, 2)

    def target(x):
        s = x[:, 0].numpy() * 2
        if kind == "binary":
            return {"y": (s > 0).astype(int)}
        if kind == "multiclass":
            return {"y": np.digitize(s, [-1, 1])}
        if kind == "regression":
            return {"y": 50 + 10 * s}
        t = np.random.default_rng(0).exponential(1 / np.exp(s))
        return {"time": t, "event": np.ones(len(t), int)}

    fit = select_and_score(kind, (x_tr, target(x_tr)), (x_va, target(x_va)), x_te, CFG)
    t = target(x_te)
    if kind == "binary":
        assert auroc(t["y"], fit.test_scores) > 0.95
    elif kind == "multiclass":
        assert fit.test_scores.shape == (80, 3) and (fit.test_scores.argmax(1) == t["y"]).mean() > 0.8
    elif kind == "regression":
        assert mae(t["y"], fit.test_scores) < 0.3 * mae(t["y"], np.full(80, t["y"].mean()))
    else:
        assert c_index(t["time"], t["event"], fit.test_scores) > 0.75


def test_attentive_probe_finds_a_signal_in_one_token():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(160, 12, 16, generator=g)
    y = (torch.rand(160, generator=g) > 0.5).long()
    u = torch.randn(16, generator=g)
    tokens[:, 3, :] += y[:, None] * (u - u.mean())  # a lesion pattern in token 3 of positive subjects only
    t = {"y": y.numpy()}
    cfg = replace(CFG, attn_epochs=20, attn_lr_grid=(3e-3,))  # one lr: this tests learning, not selection
    fit = select_and_score(
        "binary",
        (tokens[:100], {"y": t["y"][:100]}),
        (tokens[100:130], {"y": t["y"][100:130]}),
        tokens[130:],
        cfg,
        True,
    )
    assert auroc(t["y"][130:], fit.test_scores) > 0.9


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    torch.set_num_threads(2)
    ctx = tiny_cohort(tmp_path_factory.mktemp("evalwh"), n_subjects=20)
    return prepare(ctx, None, CFG)


def test_random_init_encoder_is_independent_of_the_pretraining_init(state):
    from model.encoder import build_encoder

    torch.manual_seed(0)  # the tiny preset's pretraining seed
    init = build_encoder(state.model_cfg)
    w = dict(state.encoders["random_init"].named_parameters())
    name, p = next((n, p) for n, p in init.named_parameters() if p.ndim > 1)
    assert not torch.allclose(p, w[name])


def test_every_protocol_runs_and_scores_every_test_subject(state):
    specs = default_tasks(state.cohort, state.cfg)
    assert {s.protocol for s in specs} >= {"linear", "attentive", "fusion_early", "fusion_late", "finetune", "fewshot"}
    assert {s.protocol for s in specs} >= {"fusion_gated", "fusion_mil", "fusion_poe"}
    assert {s.kind for s in specs} == {"binary", "multiclass", "regression", "survival"}
    results = [run_protocol(state, s) for s in specs]
    out = finish(state, results)
    assert out.tasks, state.notes
    for t in out.tasks:
        n_rows = len(next(iter(t.curves["target"].values())))
        assert t.results["pretrained"] is not None and "random_init" in t.differences
        for m, s in t.curves.get("scores", {}).items():
            assert len(s) == n_rows and np.isfinite(s).all(), (t.task, m)
        assert set(t.differences) <= set(BASELINES)
        j = t.as_json()
        assert set(j) == {"task", "metric", "results", "paired_difference"}
        for e in (*j["results"].values(), *j["paired_difference"].values()):
            assert set(e) == {"value", "ci"}
    # a tiny cohort's test split is too small: evaluate says so in words, for every task
    assert all(e.note and e.value is None for t in out.tasks for e in t.results.values())
    rows = state.ctx.manifest.query("SELECT count(*) AS n FROM evaluations WHERE note IS NOT NULL")
    assert rows[0]["n"] >= len(out.tasks)


def test_selection_never_reads_test_labels(state):
    """Permuting the test subjects' labels changes no prediction: test labels are only used to score."""
    spec = TaskSpec("lesion", "binary", "lesion", ("FLAIR",), "linear")
    before = run_protocol(state, spec)
    test = state.cohort.subjects("random", "test", ("FLAIR",))
    saved = {s: dict(state.cohort.targets[s]) for s in test}
    labels = [saved[s]["lesion"] for s in test]
    try:
        for s, v in zip(test, [1 - v for v in labels], strict=True):
            state.cohort.targets[s]["lesion"] = v
        after = run_protocol(state, spec)
    finally:
        for s in test:
            state.cohort.targets[s].update(saved[s])
    for m in before.curves["scores"]:
        np.testing.assert_allclose(before.curves["scores"][m], after.curves["scores"][m])
    assert before.curves["target"]["y"] != after.curves["target"]["y"]


@pytest.mark.parametrize("protocol", ["fusion_gated", "fusion_mil", "fusion_poe"])
def test_learned_fusion_scores_every_method_and_never_reads_test_labels(state, protocol):
    """As above for each learned fusion over T1w + FLAIR: every method (baselines too) scores each test subject."""
    spec = TaskSpec(f"lesion_{protocol}", "binary", "lesion", ("T1w", "FLAIR"), protocol)
    before = run_protocol(state, spec)
    test = state.cohort.subjects("random", "test", spec.modalities)
    assert before.protocol == protocol and before.n_test == len(test)
    assert set(before.curves["scores"]) == {"pretrained", "random_init", "handcrafted", "cnn_mae", "scratch_cnn"}
    saved = {s: dict(state.cohort.targets[s]) for s in test}
    try:
        for s in test:
            state.cohort.targets[s]["lesion"] = 1 - saved[s]["lesion"]
        after = run_protocol(state, spec)
    finally:
        for s in test:
            state.cohort.targets[s].update(saved[s])
    for m, scores in before.curves["scores"].items():
        assert len(scores) == len(test) and np.isfinite(scores).all()
        np.testing.assert_allclose(scores, after.curves["scores"][m])
    assert before.curves["target"]["y"] != after.curves["target"]["y"]


@pytest.mark.slow  # its own warehouse and checkpoint; stats tests cover 0/1/2 subjects in the default run
def test_evaluate_end_to_end_with_two_labelled_subjects(tmp_path):
    """With almost nothing labelled, evaluate returns notes instead of crashing."""
    ctx = tiny_cohort(tmp_path, n_subjects=4)
    out = evaluate(ctx, preset=replace(CFG, run_cnn_mae=False, run_finetune=False, run_scratch_cnn=False))
    assert all(e.value is None for t in out.tasks for e in t.results.values())
    assert out.notes or out.tasks


def test_regional_readout_keeps_where_a_global_mean_loses_it():
    """Two groups with the same blob in opposite corners: equal means, separable region blocks."""
    from tasks.evaluation.features import readout

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(80, 6, 4, 4, 4, generator=g) * 0.1  # [B, D, x, y, z]
    y = torch.arange(80) % 2
    maps[y == 0, :, :2, :2, :2] += 1.0  # one corner block
    maps[y == 1, :, 2:, 2:, 2:] += 1.0  # the opposite one
    mean, regional = readout(maps, 1), readout(maps, 2)
    assert mean.shape == (80, 6) and regional.shape == (80, 6 * 9)
    torch.testing.assert_close(regional[:, :6], mean)  # the global mean comes first (tune_recipe slices it)
    t = {"y": y.numpy()}
    scores = {}
    for name, x in (("mean", mean), ("regional", regional)):
        fit = select_and_score("binary", (x[:40], {"y": t["y"][:40]}), (x[40:60], {"y": t["y"][40:60]}), x[60:], CFG)
        scores[name] = auroc(t["y"][60:], fit.test_scores)
    assert scores["regional"] > 0.95 and scores["mean"] < 0.8, scores


def test_regional_readout_reaches_every_frozen_token_and_cnn_method(state):
    from model.cnn import ResNet3d
    from tasks.evaluation.features import extract_bank

    cfg = replace(state.cfg, pool_regions=2)
    torch.manual_seed(0)
    mae = ResNet3d(width=cfg.cnn_width, downsample=cfg.cnn_downsample).eval()
    bank = extract_bank(state.ctx, state.cohort, state.encoders, mae, cfg, tuple(state.model_cfg.grid))
    width = state.model_cfg.enc_width
    for name in ("pretrained", "random_init"):
        assert bank.pooled[name].shape[1] == 9 * width
        torch.testing.assert_close(bank.pooled[name][:, :width], state.bank.pooled[name], atol=1e-5, rtol=1e-4)
    assert bank.pooled["cnn_mae"].shape[1] == 9 * mae.out_dim
    assert bank.pooled["handcrafted"].shape == state.bank.pooled["handcrafted"].shape  # has its own octants
