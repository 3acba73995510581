"""A compact per-step pretraining curve that stays small in a checkpoint however long the run.

Why not the checkpoint's `losses`: that list holds one phase only, grows with every step, and has no
learning rate or MoE balance. The evaluation report plots loss, lr and MinVio/MaxVio over the whole
lineage of a checkpoint (main phase, then a warm start or a cooldown continuing its step count), so
the curve travels from a checkpoint into the phases that start from it.

Downsampling: every step is kept until there are `max_points`; then the stride doubles and only the
steps on the new stride (counted from the first step) stay, so points remain evenly spaced and the
first step is never dropped. The newest step is always kept as well (the curve ends where the run
ended), and so is the last step of each earlier phase (where the next phase began).
"""

from __future__ import annotations

import math
from typing import Any

FIELDS = ("step", "loss", "lr", "minvio", "maxvio")  # step: global, continuing across phases
MAX_POINTS = 2000


class StepHistory:
    """Columns of FIELDS, at most `max_points` rows; `add` one training-step record at a time."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        if max_points < 4:
            raise ValueError(f"max_points={max_points} leaves no room for a curve; use at least 4")
        self.max_points = max_points
        self.stride = 1
        self.columns: dict[str, list[float]] = {f: [] for f in FIELDS}
        self.phases: list[dict[str, Any]] = []  # {"phase": name, "start": global step before its first step}
        self.pinned: list[int] = []  # phase boundaries: never thinned away

    def __len__(self) -> int:
        return len(self.columns["step"])

    @property
    def last_step(self) -> int:
        """Global step of the newest point (0 for an empty curve)."""
        return int(self.columns["step"][-1]) if len(self) else 0

    def start_phase(self, name: str, start_if_empty: int = 0) -> int:
        """Mark where a phase begins; returns the global step its own step 0 maps to.

        `start_if_empty`: where to begin when the parent kept no curve (a checkpoint from before curves
        existed), so that the steps still continue the parent's count.
        """
        start = self.last_step if len(self) else start_if_empty
        if len(self):
            self.pinned.append(start)
        self.phases.append({"phase": name, "start": start})
        return start

    def add(self, record: dict[str, float]) -> None:
        """One step's record (`step` already global); missing fields (a dense model's MinVio) are NaN."""
        step = int(record["step"])
        if len(self) and self._off_stride(self.last_step) and self.last_step not in self.pinned:
            self._drop(len(self) - 1)  # the previous newest point was kept only because it was newest
        for f in FIELDS:
            self.columns[f].append(step if f == "step" else float(record.get(f, math.nan)))
        if len(self) > self.max_points:  # one row was added: one thinning brings it back under the cap
            self._thin()

    def _origin(self) -> int:
        return int(self.columns["step"][0])

    def _off_stride(self, step: int) -> bool:
        return (step - self._origin()) % self.stride != 0

    def _drop(self, i: int) -> None:
        for col in self.columns.values():
            del col[i]

    def _thin(self) -> None:
        self.stride *= 2
        steps = self.columns["step"]
        keep = [
            i
            for i, s in enumerate(steps)
            if not self._off_stride(int(s)) or int(s) in self.pinned or i == len(steps) - 1
        ]
        self.columns = {f: [col[i] for i in keep] for f, col in self.columns.items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and numbers: loads under torch.load(weights_only=True) and dumps to JSON."""
        return {
            "max_points": self.max_points,
            "stride": self.stride,
            "phases": [dict(p) for p in self.phases],
            "pinned": list(self.pinned),
            **{f: list(col) for f, col in self.columns.items()},
        }

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Continue the curve saved by `state_dict`; None (a checkpoint from before curves existed) keeps
        this one as it is."""
        if not state:
            return
        self.max_points, self.stride = int(state["max_points"]), int(state["stride"])
        self.phases = [dict(p) for p in state["phases"]]
        self.pinned = [int(s) for s in state["pinned"]]
        self.columns = {f: [int(v) if f == "step" else float(v) for v in state[f]] for f in FIELDS}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> StepHistory:
        h = cls()
        h.load_state(state)
        return h
