"""Compatibility entry point: the evaluation lives in the `tasks.evaluation` package."""

from __future__ import annotations

from tasks.evaluation.runner import EvaluationOutcome, TaskResult, evaluate
from tasks.evaluation.stats import auroc

__all__ = ["EvaluationOutcome", "TaskResult", "auroc", "evaluate"]
