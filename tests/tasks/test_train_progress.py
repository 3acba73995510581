"""Pretraining progress in the log when no progress bar can draw: throttled, with a rate and an ETA."""

from __future__ import annotations

import logging

from tasks.train import ProgressLog


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _feed(progress: ProgressLog, clock: Clock, steps: range, seconds_per_step: float) -> None:
    for step in steps:
        progress({"step": step, "loss": 1.0 / step, "minvio": 0.5})
        clock.t += seconds_per_step


def test_logs_every_interval_and_the_last_step_with_an_eta(caplog):
    clock, last = Clock(), {}
    progress = ProgressLog(10, "main", last, every_s=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="mrifoundry.train"):
        _feed(progress, clock, range(1, 11), 10.0)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[1].split(")")[0] for line in lines] == ["main"] * 3
    assert ["step 4/10" in lines[0], "step 7/10" in lines[1], "step 10/10" in lines[2]] == [True] * 3
    # step 4 at t=30 s, 3 steps after the first one (t=0): 0.10 steps/s, 6 steps left -> 60 s
    assert "0.10 steps/s" in lines[0] and "ETA 1m00s" in lines[0], lines[0]
    assert "ETA 0s" in lines[2] and "(100 %)" in lines[2]
    assert last["step"] == 10 and last["minvio"] == 0.5  # the outcome still gets the last record


def test_a_resumed_run_measures_its_rate_from_where_it_resumed(caplog):
    clock = Clock()
    progress = ProgressLog(1000, "cooldown", {}, every_s=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="mrifoundry.train"):
        _feed(progress, clock, range(901, 1001), 1.0)
    first = caplog.records[0].getMessage()
    assert "step 961/1000" in first and "1.00 steps/s" in first and "ETA 39s" in first, first


def test_a_bad_log_level_is_named_with_the_fix(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("MRIFOUNDRY_LOG_LEVEL", "chatty")
    assert main(["model-info", "--preset", "tiny"]) == 2
    assert "MRIFOUNDRY_LOG_LEVEL='CHATTY'" in capsys.readouterr().err
