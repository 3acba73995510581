"""Evaluation statistics: subject-grouped folds, AUROC, subject bootstrap."""

from __future__ import annotations

import numpy as np

from tasks.evaluate import auroc, bootstrap_ci, grouped_folds


def test_grouped_folds_never_split_a_subject_and_balance_classes():
    groups = np.repeat(np.array([f"s{i}" for i in range(8)]), 3)
    y = np.repeat(np.array([0, 1] * 4), 3)
    folds = grouped_folds(groups, y, k=4, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))
    for f in folds:
        assert len(set(groups[f])) == 2
        assert set(y[f]) == {0, 1}  # one positive and one negative subject per fold
    for s in np.unique(groups):
        assert sum(s in set(groups[f]) for f in folds) == 1


def test_auroc_known_values():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_bootstrap_interval_contains_point_estimate():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20).astype(str), 2)
    y = np.repeat(np.arange(20) % 2, 2)
    s = y + rng.normal(0, 0.8, size=y.size)
    lo, hi = bootstrap_ci(y, s, groups, n=200)
    a = auroc(y, s)
    assert 0.0 <= lo <= a <= hi <= 1.0 and hi - lo > 0.01
