"""What a user watching a curation sees: series done / total, volumes per minute, ETA, failures so far.

`CurationProgress` counts recorded outcomes and renders one line. In a terminal it drives a live tqdm
bar on stderr; otherwise (a log file, a Prefect worker) the flow logs that line per series instead.
The rate is measured from the first finished unit on, so worker start-up does not flatter the ETA.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

ENV_FORCE = "MRIFOUNDRY_PROGRESS"
"""Set to 1 to draw the live bar even when stderr is not a terminal, 0 to never draw it."""


def fmt_duration(seconds: float) -> str:
    """How long, as a person reads it: 45s, 3m05s, 2h10m (curation and pretraining ETAs alike)."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class CurationProgress:
    """Counts and rates of one curation run's preprocessing."""

    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    _first_done: float | None = None
    _bar: Any = None

    def record(self, decision: str | None) -> None:
        """One series finished: `decision` is its QC decision, None when it failed in a stage."""
        now = time.monotonic()
        self._first_done = self._first_done or now
        self.done += 1
        if decision is None:
            self.failed += 1
        else:
            self.decisions[decision] = self.decisions.get(decision, 0) + 1
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix(), refresh=False)
            self._bar.update(1)

    @property
    def per_minute(self) -> float | None:
        """Series per minute since the first one finished (None until two have)."""
        if self._first_done is None or self.done < 2:
            return None
        elapsed = time.monotonic() - self._first_done
        return 60.0 * (self.done - 1) / elapsed if elapsed > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.per_minute
        return None if not rate else 60.0 * (self.total - self.done) / rate

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else self.done / self.total

    def postfix(self) -> str:
        rate, eta = self.per_minute, self.eta_seconds
        return ", ".join(
            (
                f"{rate:.1f} vol/min" if rate else "- vol/min",
                f"ETA {fmt_duration(eta)}" if eta is not None else "ETA -",
                f"{self.failed} failed",
            )
        )

    def line(self) -> str:
        return f"{self.done}/{self.total} series, {self.postfix()}"

    def start_bar(self, stream: TextIO | None = None) -> bool:
        """Draw a live bar if the stream is a terminal (or MRIFOUNDRY_PROGRESS=1); True when drawn."""
        stream = stream or sys.stderr
        force = os.environ.get(ENV_FORCE, "").strip()
        live = force == "1" or (force != "0" and hasattr(stream, "isatty") and stream.isatty())
        if not live or self.total == 0:
            return False
        from tqdm import tqdm

        self._bar = tqdm(total=self.total, desc="curate", unit="series", file=stream, dynamic_ncols=True)
        self._bar.set_postfix_str(self.postfix())
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
