"""The evaluation tasks and the frozen-feature protocols that answer them.

Each task names a target, the modalities it reads and a protocol; every method (pretrained encoder
and baselines) is run through the same protocol on the same fixed splits, and scores the same test
subjects. What differs per method is only the representation (see features.py) or, for the scratch
CNN and fine-tuning, the network trained (see training.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.evaluation import fusion
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.data import EvalCohort, has_target, target_arrays
from tasks.evaluation.features import FeatureBank
from tasks.evaluation.heads import select_and_score

ENCODERS = ("pretrained", "random_init")
FROZEN_BASELINES = ("handcrafted", "cnn_mae")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # binary | multiclass | regression | survival
    target: str  # label column, or "modality"
    modalities: tuple[str, ...]
    protocol: str  # linear | attentive | fusion_early | fusion_late | fusion_{gated,mil,poe} | finetune | fewshot
    scheme: str = "random"
    k: int | None = None  # few-shot: positives (and negatives) per class in train


def default_tasks(cohort: EvalCohort, cfg: EvalConfig) -> list[TaskSpec]:
    """The task list for this cohort: only targets it has, only modalities it has."""
    mods = cohort.modalities
    lesion_mod = "FLAIR" if "FLAIR" in mods else mods[0]
    struct_mod = "T1w" if "T1w" in mods else mods[0]
    tasks = []
    if has_target(cohort, "binary", "lesion"):
        tasks.append(TaskSpec("lesion", "binary", "lesion", (lesion_mod,), "linear"))
        if cfg.run_attentive:
            tasks.append(TaskSpec("lesion_attentive", "binary", "lesion", (lesion_mod,), "attentive"))
        if "held_out_site" in cohort.splits and cohort.splits["held_out_site"]:
            tasks.append(TaskSpec("lesion_held_out_site", "binary", "lesion", (lesion_mod,), "linear", "held_out_site"))
        if cfg.run_fusion and len(mods) > 1:
            tasks.append(TaskSpec("lesion_fusion_early", "binary", "lesion", mods, "fusion_early"))
            tasks.append(TaskSpec("lesion_fusion_late", "binary", "lesion", mods, "fusion_late"))
            tasks += [TaskSpec(f"lesion_{p}", "binary", "lesion", mods, p) for p in fusion.enabled(cfg)]
        if cfg.run_finetune:
            tasks.append(TaskSpec("lesion_finetune", "binary", "lesion", (lesion_mod,), "finetune"))
        for k in cfg.fewshot_ks:
            tasks.append(TaskSpec(f"lesion_fewshot_k{k}", "binary", "lesion", (lesion_mod,), "fewshot", k=k))
    # Structure is a matter of where: beside the linear probe on pooled features, an attentive probe that
    # can weigh the tokens around the ventricles (V-JEPA reads its frozen features this way).
    for kind, target in (("binary", "enlarged_ventricles"), ("regression", "age")):
        if has_target(cohort, kind, target):
            tasks.append(TaskSpec(target, kind, target, (struct_mod,), "linear"))
            if cfg.run_attentive:
                tasks.append(TaskSpec(f"{target}_attentive", kind, target, (struct_mod,), "attentive"))
    if has_target(cohort, "survival", "survival"):
        tasks.append(TaskSpec("survival", "survival", "survival", (lesion_mod,), "linear"))
    if len(mods) > 1:
        tasks.append(TaskSpec("modality", "multiclass", "modality", mods, "linear"))
    return tasks


@dataclass(frozen=True)
class SplitData:
    """Subjects of one split and their bank rows per modality, with targets."""

    subjects: list[str]
    rows: dict[str, torch.Tensor]  # modality -> [n] rows into the bank
    target: dict[str, np.ndarray]
    groups: np.ndarray  # subject of each target row (modality task: one row per volume)


def split_data(cohort: EvalCohort, bank: FeatureBank, spec: TaskSpec, split: str) -> SplitData:
    subjects = cohort.subjects(spec.scheme, split, spec.modalities)
    if spec.target == "modality":
        vids = [cohort.volumes[s][m] for s in subjects for m in spec.modalities]
        y = np.array([spec.modalities.index(m) for s in subjects for m in spec.modalities])
        groups = np.array([s for s in subjects for _ in spec.modalities])
        return SplitData(subjects, {"all": bank.rows(vids)}, {"y": y}, groups)
    rows = {m: bank.rows([cohort.volumes[s][m] for s in subjects]) for m in spec.modalities}
    return SplitData(subjects, rows, target_arrays(cohort, subjects, spec.kind, spec.target), np.array(subjects))


def fewshot_subset(d: SplitData, k: int, seed: int) -> SplitData | None:
    """k positive and k negative training subjects (seeded); None when the split has fewer."""
    y = d.target["y"]
    rng = np.random.default_rng([seed, k])
    pick = []
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        if len(idx) < k:
            return None
        pick.extend(rng.choice(idx, size=k, replace=False).tolist())
    pick = np.array(sorted(pick))
    return SplitData(
        [d.subjects[i] for i in pick],
        {m: r[pick] for m, r in d.rows.items()},
        {key: v[pick] for key, v in d.target.items()},
        d.groups[pick],
    )


def _inputs(bank: FeatureBank, method: str, d: SplitData, spec: TaskSpec) -> tuple[torch.Tensor, bool]:
    """(input tensor, attentive?) of one method for one split under the task's protocol."""
    tokens = method in bank.tokens and spec.protocol in ("attentive", "fusion_early")
    if tokens:
        parts = [bank.tokens[method][d.rows[m]].float() for m in spec.modalities]
        return torch.cat(parts, dim=1), True  # early fusion: concatenate token sequences [n, M*T, D]
    key = "all" if "all" in d.rows else None
    if key:
        return bank.pooled[method][d.rows[key]], False
    return torch.cat([bank.pooled[method][d.rows[m]] for m in spec.modalities], dim=1), False


def run_frozen(
    bank: FeatureBank, spec: TaskSpec, tr: SplitData, va: SplitData, te: SplitData, cfg: EvalConfig
) -> dict[str, np.ndarray]:
    """Test scores of every frozen-representation method for one task (fine-tuning is elsewhere)."""
    out: dict[str, np.ndarray] = {}
    methods = [m for m in (*ENCODERS, *FROZEN_BASELINES) if m in bank.pooled]
    for method in methods:
        if spec.protocol == "fusion_late":
            per_mod = []
            for mod in spec.modalities:
                one = TaskSpec(spec.name, spec.kind, spec.target, (mod,), "linear", spec.scheme)
                xs = [_inputs(bank, method, d, one)[0] for d in (tr, va, te)]
                per_mod.append(
                    select_and_score(spec.kind, (xs[0], tr.target), (xs[1], va.target), xs[2], cfg).test_scores
                )
            out[method] = np.mean(per_mod, axis=0)  # averaged logits
            continue
        if spec.protocol in fusion.NETWORKS:  # learned fusion over per-modality pooled features [n, M, D]
            xs = [fusion.stack_modalities(bank.pooled[method], d.rows, spec.modalities) for d in (tr, va, te)]
            fit = fusion.fitter(spec.protocol)
            out[method] = select_and_score(
                spec.kind, (xs[0], tr.target), (xs[1], va.target), xs[2], cfg, fit=fit
            ).test_scores
            continue
        (x_tr, att), (x_va, _), (x_te, _) = (_inputs(bank, method, d, spec) for d in (tr, va, te))
        out[method] = select_and_score(
            spec.kind, (x_tr, tr.target), (x_va, va.target), x_te, cfg, attentive=att
        ).test_scores
    return out
