"""Fit a head on train, choose its hyper-parameters on val, score test once.

`select_and_score` never receives test targets: it gets test *inputs* only, so by construction
the choice of hyper-parameters cannot depend on test labels (tests/tasks/test_evaluate_protocols.py
checks that permuting test labels changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tasks.evaluation.config import EvalConfig
from tasks.evaluation.stats import HIGHER_IS_BETTER, METRICS, metric_value


@dataclass(frozen=True)
class Fitted:
    hp: float
    val_metric: float
    test_scores: np.ndarray  # [N_test] or [N_test, C]


def _torch_target(kind: str, target: dict[str, np.ndarray]) -> torch.Tensor:
    if kind == "survival":
        return torch.tensor(np.stack([target["time"], target["event"]], 1), dtype=torch.float32)
    return torch.as_tensor(target["y"])


def _scores(kind: str, out: torch.Tensor) -> np.ndarray:
    if kind == "multiclass":
        return out.softmax(-1).numpy()
    return out[:, 0].numpy()


def target_and_loss(kind: str, target: dict[str, np.ndarray]):
    """(training target, base loss, head output -> scores in the target's unit) for a learned head.

    Regression heads fit standardised targets, so one lr / penalty grid serves ages in years and volumes
    in millilitres alike; their scores are mapped back to the original unit.
    """
    from model import heads

    t = _torch_target(kind, target)
    y_mean, y_std = 0.0, 1.0
    if kind == "regression":
        y_mean, y_std = float(t.float().mean()), float(t.float().std().clamp_min(1e-6)) if len(t) > 1 else 1.0
        t = (t.float() - y_mean) / y_std
    loss = {
        "binary": heads.binary_loss,
        "multiclass": heads.multiclass_loss,
        "regression": heads.regression_loss,
        "survival": heads.cox_loss,
    }[kind]

    def to_scores(out: torch.Tensor) -> np.ndarray:
        s = _scores(kind, out)
        return s * y_std + y_mean if kind == "regression" else s

    return t, loss, to_scores


def _n_out(kind: str, y: np.ndarray | None) -> int:
    return int(y.max()) + 1 if kind == "multiclass" else 1


def fit_one(
    kind: str, x: torch.Tensor, target: dict[str, np.ndarray], hp: float, cfg: EvalConfig, attentive: bool, n_out: int
):
    """One head on (x, target) with hyper-parameter hp: regularisation strength, or lr for attentive probes.

    Linear heads are solved by convex solvers (scikit-learn L-BFGS / ridge, Cox by L-BFGS): exact,
    deterministic and milliseconds on a loaded CPU; the attentive probe is trained by AdamW.
    """
    if attentive:
        return _fit_attentive(kind, x, target, hp, cfg, n_out)
    from sklearn.linear_model import LogisticRegression, Ridge

    xn = x.float().numpy()
    mean, std = xn.mean(0), np.maximum(xn.std(0), 1e-6)

    def z(a: torch.Tensor) -> np.ndarray:
        return (a.float().numpy() - mean) / std

    if kind in ("binary", "multiclass"):
        clf = LogisticRegression(C=1.0 / hp, max_iter=500).fit(z(x), target["y"])
        if kind == "binary":
            return lambda a: clf.decision_function(z(a))
        return lambda a: _full_proba(clf, z(a), n_out)
    if kind == "regression":
        reg = Ridge(alpha=hp).fit(z(x), target["y"])
        return lambda a: reg.predict(z(a))
    from model.heads import fit_linear_cox

    w = fit_linear_cox(
        torch.from_numpy(z(x)),
        torch.as_tensor(target["time"]),
        torch.as_tensor(target["event"]),
        l2=hp / max(len(xn), 1),
    )
    return lambda a: (torch.from_numpy(z(a)) @ w).numpy()


def _full_proba(clf, xa: np.ndarray, n_out: int) -> np.ndarray:
    p = np.zeros((len(xa), n_out))
    p[:, clf.classes_] = clf.predict_proba(xa)
    return p


def _fit_attentive(kind: str, x: torch.Tensor, target: dict[str, np.ndarray], lr: float, cfg: EvalConfig, n_out: int):
    from model import heads
    from model.probes import AttentiveProbe

    t, loss, to_scores = target_and_loss(kind, target)
    torch.manual_seed(cfg.seed)
    dim = x.shape[-1]
    n_heads = cfg.attn_heads if dim % cfg.attn_heads == 0 else 1
    head = heads.TokenStandardizer(x, AttentiveProbe(dim, n_out=n_out, heads=n_heads))
    heads.fit_head(
        head,
        x,
        t,
        loss,
        epochs=cfg.attn_epochs,
        lr=lr,
        weight_decay=1e-2,
        batch_size=None if kind == "survival" else 16,
        seed=cfg.seed,
    )

    def predict(z: torch.Tensor) -> np.ndarray:
        return to_scores(heads.predict(head, z))

    return predict


def select_and_score(
    kind: str,
    train: tuple[torch.Tensor, dict[str, np.ndarray]],
    val: tuple[torch.Tensor, dict[str, np.ndarray]],
    test_x: torch.Tensor,
    cfg: EvalConfig,
    attentive: bool = False,
    grid: Sequence[float] | None = None,
    fit: Callable | None = None,
) -> Fitted:
    """Fit one head per hyper-parameter on train, keep the best on val, score test inputs once.

    `fit` replaces `fit_one` (same arguments) for heads defined elsewhere (fusion.py)."""
    metric = METRICS[kind]
    grid = tuple(grid or (cfg.attn_lr_grid if attentive else cfg.wd_grid))
    n_out = _n_out(kind, train[1].get("y"))
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    best: tuple[float, float, Callable] | None = None
    for hp in grid:
        predict = (fit or fit_one)(kind, train[0], train[1], hp, cfg, attentive, n_out)
        v = metric_value(metric, val[1], predict(val[0])) if len(val[0]) else float("nan")
        key = sign * v if np.isfinite(v) else -np.inf
        if best is None or key > best[0]:
            best = (key, hp, predict)
    assert best is not None
    return Fitted(hp=best[1], val_metric=sign * best[0], test_scores=best[2](test_x))
