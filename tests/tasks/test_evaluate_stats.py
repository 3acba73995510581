"""Evaluation statistics: metrics on known cases, the paired subject bootstrap, small-n rules."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation import stats


def test_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    assert stats.auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert stats.auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert stats.auroc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert np.isnan(stats.auroc(np.array([1, 1]), np.array([0.1, 0.2])))
    assert stats.mae(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == 1.5
    assert stats.r2(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 1.0
    # C-index: risk perfectly ordered against time -> 1; reversed -> 0; censored-first pairs do not count
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([1, 1, 1, 0])
    assert stats.c_index(t, e, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0
    assert stats.c_index(t, e, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert stats.c_index(t, np.array([0, 1, 1, 1]), np.array([0.0, 3.0, 2.0, 1.0])) == 1.0


def test_paired_bootstrap_known_case():
    """Identical predictions give a difference of exactly 0 in every draw; a better method's CI excludes 0."""
    rng = np.random.default_rng(0)
    n = 200
    y = np.arange(n) % 2
    good = y + rng.normal(0, 0.5, n)
    bad = y + rng.normal(0, 3.0, n)
    idx = stats.resamples(n, 500, seed=1)
    same = stats.paired_difference("auroc", {"y": y}, good, good, idx)
    assert same.value == 0.0 and same.ci == (0.0, 0.0)
    d = stats.paired_difference("auroc", {"y": y}, good, bad, idx)
    expected = stats.auroc(y, good) - stats.auroc(y, bad)
    assert d.value == pytest.approx(expected) and d.ci[0] > 0 and d.ci[0] <= d.value <= d.ci[1]
    # orientation: for MAE a lower error is better, so a better pretrained model is still positive
    yr = rng.normal(50, 10, n)
    m = stats.paired_difference("mae", {"y": yr}, yr + rng.normal(0, 1, n), yr + rng.normal(0, 5, n), idx)
    assert m.value > 0 and m.ci[0] > 0
    # the bootstrap resamples subjects and refits nothing: each draw re-scores the same predictions
    e = stats.estimate("auroc", {"y": y}, good, idx)
    manual = [stats.auroc(y[b], good[b]) for b in idx]
    assert e.ci == (pytest.approx(np.percentile(manual, 2.5)), pytest.approx(np.percentile(manual, 97.5)))


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_small_n_says_why_in_words_and_never_crashes(n):
    y = np.arange(n) % 2
    s = np.linspace(0, 1, n)
    idx = stats.resamples(n, 50)
    for metric, target in (
        ("auroc", {"y": y}),
        ("mae", {"y": s}),
        ("c_index", {"time": s + 1, "event": y}),
        ("macro_auroc", {"y": y}),
    ):
        pred = np.tile(s[:, None], (1, 2)) if metric == "macro_auroc" else s
        e = stats.estimate(metric, target, pred, idx)
        d = stats.paired_difference(metric, target, pred, pred, idx)
        for x in (e, d):
            assert x.value is None and x.ci is None
            assert x.note.startswith("not shown:") and ("subject" in x.note or "event" in x.note)
            assert x.as_json() == {"value": None, "ci": None}


def test_small_n_threshold_is_per_class():
    y = np.array([1] * 9 + [0] * 40)
    assert "only 9" in stats.small_n_reason("auroc", {"y": y})
    assert stats.small_n_reason("auroc", {"y": np.array([1] * 10 + [0] * 10)}) is None


def test_spread_across_tasks():
    s = stats.spread([0.1, 0.3, None, float("nan")])
    assert (
        s["n_tasks"] == 2 and s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    )
    assert stats.spread([])["mean"] is None
