"""Test-set statistics: metrics, a subject bootstrap that refits nothing, paired differences, small-n rules.

Why this shape: the question a hospital asks is "is the new encoder better than X on *these* test
patients?". Every method is fitted once (hyper-parameters on val), scores the test subjects once,
and the uncertainty comes from resampling those test subjects with replacement: the same resample
indices for both methods, so the interval is for the paired difference, not two overlapping
marginals. Nothing is refitted inside the bootstrap (the fits are fixed; only the test sample varies).

Predictions are per subject (one row per test subject), so resampling rows is resampling subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A task kind fixes the metric and which direction is better.
METRICS = {"binary": "auroc", "multiclass": "macro_auroc", "regression": "mae", "survival": "c_index"}
HIGHER_IS_BETTER = {"auroc": True, "macro_auroc": True, "mae": False, "r2": True, "c_index": True}
MIN_PER_CLASS = 10  # an AUROC interval over fewer subjects per class is mostly noise
MIN_SUBJECTS = 20  # regression
MIN_EVENTS = 10  # survival: the C-index lives on comparable pairs anchored at events
N_BOOT = 1000


@dataclass(frozen=True)
class Estimate:
    """A metric on the test subjects with its 95% subject-bootstrap interval, or a reason it is withheld."""

    value: float | None
    ci: tuple[float, float] | None
    n_subjects: int
    note: str | None = None  # why no number is shown (small n), in words

    def as_json(self) -> dict:
        return {"value": self.value, "ci": list(self.ci) if self.ci else None}


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted half; nan when a class is absent."""
    y, s = np.asarray(y).astype(bool), np.asarray(s, dtype=float)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over classes present (p: [N, C] scores)."""
    vals = [auroc(y == c, p[:, c]) for c in range(p.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(vals)) if vals else float("nan")


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, float) - np.asarray(pred, float)))) if len(y) else float("nan")


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    ss = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    return 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else float("nan")


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: among pairs where the earlier time is an event, how often the earlier has higher risk."""
    t, e, r = np.asarray(time, float), np.asarray(event).astype(bool), np.asarray(risk, float)
    if len(t) < 2:
        return float("nan")
    earlier = (t[:, None] < t[None, :]) & e[:, None]  # i had the event before j's time
    n = earlier.sum()
    if n == 0:
        return float("nan")
    conc = (r[:, None] > r[None, :]) & earlier
    ties = (r[:, None] == r[None, :]) & earlier
    return float((conc.sum() + 0.5 * ties.sum()) / n)


def metric_value(metric: str, target: dict[str, np.ndarray], pred: np.ndarray) -> float:
    """The metric on one (possibly resampled) test set; target holds 'y' or 'time'/'event'."""
    if metric == "auroc":
        return auroc(target["y"], pred)
    if metric == "macro_auroc":
        return macro_auroc(target["y"], pred)
    if metric == "mae":
        return mae(target["y"], pred)
    if metric == "r2":
        return r2(target["y"], pred)
    if metric == "c_index":
        return c_index(target["time"], target["event"], pred)
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(HIGHER_IS_BETTER)}")


def small_n_reason(metric: str, target: dict[str, np.ndarray]) -> str | None:
    """Why an interval on this test set would not mean anything, in words; None when it is fine."""
    if metric in ("auroc", "macro_auroc"):
        y = np.asarray(target["y"])
        classes, counts = np.unique(y, return_counts=True) if len(y) else (np.array([]), np.array([]))
        if len(classes) < 2:
            return f"not shown: the {len(y)} test subject(s) all belong to one class, so AUROC is undefined"
        if counts.min() < MIN_PER_CLASS:
            return (
                f"not shown: only {int(counts.min())} test subject(s) in the smallest class "
                f"({len(y)} in all); an AUROC interval needs at least {MIN_PER_CLASS} per class"
            )
        return None
    if metric == "c_index":
        ev = int(np.asarray(target["event"]).sum())
        if ev < MIN_EVENTS:
            return (
                f"not shown: only {ev} observed event(s) among test subjects; the C-index needs at least {MIN_EVENTS}"
            )
        return None
    n = len(target["y"])
    if n < MIN_SUBJECTS:
        return f"not shown: only {n} test subject(s); a {metric} interval needs at least {MIN_SUBJECTS}"
    return None


def _take(target: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[idx] for k, v in target.items()}


def _n(target: dict[str, np.ndarray]) -> int:
    return len(next(iter(target.values())))


def resamples(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, n] subject indices drawn with replacement (shared by every method of one task)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), int)


def estimate(metric: str, target: dict[str, np.ndarray], pred: np.ndarray, idx: np.ndarray) -> Estimate:
    """Point value on the test subjects and the 2.5/97.5 percentiles over the resamples `idx`."""
    n = _n(target)
    reason = small_n_reason(metric, target)
    if reason is not None:
        return Estimate(None, None, n, reason)
    value = metric_value(metric, target, pred)
    boots = np.array([metric_value(metric, _take(target, b), np.asarray(pred)[b]) for b in idx])
    boots = boots[np.isfinite(boots)]
    ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if len(boots) else None
    return Estimate(float(value), ci, n)


def paired_difference(
    metric: str, target: dict[str, np.ndarray], pred: np.ndarray, base: np.ndarray, idx: np.ndarray
) -> Estimate:
    """Pretrained minus baseline (or baseline minus pretrained for error metrics): positive = pretrained better.

    Both methods are scored on the same resampled subjects in each bootstrap draw.
    """
    n = _n(target)
    reason = small_n_reason(metric, target)
    if reason is not None:
        return Estimate(None, None, n, reason)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0

    def diff(t: dict[str, np.ndarray], a: np.ndarray, b: np.ndarray) -> float:
        return sign * (metric_value(metric, t, a) - metric_value(metric, t, b))

    pred, base = np.asarray(pred), np.asarray(base)
    value = diff(target, pred, base)
    boots = np.array([diff(_take(target, b), pred[b], base[b]) for b in idx])
    boots = boots[np.isfinite(boots)]
    ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if len(boots) else None
    return Estimate(float(value), ci, n)


def spread(values: list[float]) -> dict[str, float | int | None]:
    """Mean and standard deviation of a per-task quantity across tasks (ignoring withheld ones)."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return {"mean": None, "sd": None, "n_tasks": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n_tasks": int(len(v))}
