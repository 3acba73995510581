"""The downsampled pretraining curve: bounded, evenly thinned, first and last step always kept."""

from __future__ import annotations

import math

import pytest

from model.history import StepHistory


def _run(h: StepHistory, first: int, last: int) -> None:
    for s in range(first, last + 1):
        h.add({"step": s, "loss": 1.0 / s, "lr": 1e-3, "minvio": -0.5, "maxvio": 0.5})


@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1001])
def test_downsampling_keeps_first_and_last_step_and_stays_under_the_cap(n):
    h = StepHistory(max_points=8)
    _run(h, 1, n)
    steps = h.columns["step"]
    assert steps[0] == 1 and steps[-1] == n and h.columns["loss"][-1] == pytest.approx(1.0 / n)
    assert len(h) <= 8 and steps == sorted(set(steps))
    inner = steps[:-1]  # every point but the newest lies on the current stride, so spacing is even
    assert all((s - 1) % h.stride == 0 for s in inner)
    assert len(h) == n if n <= 8 else len(h) >= 4  # thinning halves, it does not collapse the curve


def test_every_step_is_kept_while_the_run_is_short():
    h = StepHistory(max_points=2000)
    _run(h, 1, 300)
    assert h.columns["step"] == list(range(1, 301)) and h.stride == 1


def test_a_continued_phase_keeps_the_parent_boundary_and_round_trips():
    h = StepHistory(max_points=8)
    h.start_phase("main")
    _run(h, 1, 13)
    start = h.start_phase("cooldown")
    assert start == 13
    _run(h, 14, 40)
    assert 13 in h.columns["step"] and h.columns["step"][0] == 1 and h.columns["step"][-1] == 40
    assert [p["phase"] for p in h.phases] == ["main", "cooldown"]
    again = StepHistory.from_state(h.state_dict())
    assert again.state_dict() == h.state_dict()
    _run(again, 41, 41)
    assert again.columns["step"][-1] == 41 and len(again) <= 8


def test_missing_fields_are_nan_and_an_absent_curve_loads_empty():
    h = StepHistory()
    h.add({"step": 1, "loss": 2.0, "lr": 0.1})  # a dense model has no MinVio/MaxVio
    assert math.isnan(h.columns["minvio"][0]) and math.isnan(h.columns["maxvio"][0])
    assert len(StepHistory.from_state(None)) == 0
    assert h.start_phase("cooldown") == 1 and StepHistory().start_phase("cooldown", start_if_empty=5) == 5
    with pytest.raises(ValueError, match="max_points=2"):
        StepHistory(max_points=2)
