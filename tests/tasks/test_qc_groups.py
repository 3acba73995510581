"""Robust group outliers (imaging.qc.groups, tasks.qc_groups): maths on plain values, then the manifest."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from imaging.qc import QCThresholds, VolumeQC, robust_location_scale, score_groups
from tasks.qc_groups import apply_group_outliers
from tasks.qc_rows import qc_row
from warehouse.manifest import Manifest, now

T = QCThresholds()
N = T.min_group_size + 2  # a group just big enough to be scored


def _metrics(i: int, **changes: float) -> dict[str, float]:
    """Typical T1w metrics with a little spread (deterministic per i)."""
    rng = np.random.default_rng(i)
    base = {
        "snr": 40.0 + rng.normal(0, 2),
        "snr_wm": 15.0 + rng.normal(0, 1),
        "cnr": 20.0 + rng.normal(0, 1),
        "cjv": 1.3 + rng.normal(0, 0.05),
        "efc": 0.55 + rng.normal(0, 0.01),
        "fber": 400.0 + rng.normal(0, 20),
        "wm2max": 0.8 + rng.normal(0, 0.02),
        "inu": 0.12 + rng.normal(0, 0.01),
        "qi1": 0.0,
        "similarity": 0.9 + rng.normal(0, 0.01),
        "brain_volume_ml": 1880.0 + rng.normal(0, 30),
    }
    return {**base, **changes}


def _group(n: int, model: str = "Prisma_fit", label: str = "T1w", prefix: str = "v") -> list[VolumeQC]:
    return [VolumeQC(f"{prefix}{i:02d}", (model, label), _metrics(i), "pass", ()) for i in range(n)]


def test_robust_scale_is_the_sd_for_normal_data_and_has_a_floor() -> None:
    rng = np.random.default_rng(0)
    med, scale = robust_location_scale(list(rng.normal(10.0, 2.0, 20000)), min_relative_scale=0.0)
    assert med == pytest.approx(10.0, abs=0.05) and scale == pytest.approx(2.0, rel=0.03)
    assert robust_location_scale([1.0] * 9 + [0.5], min_relative_scale=0.02) == (1.0, pytest.approx(0.02))
    assert robust_location_scale([0.0] * 5, min_relative_scale=0.02) == (0.0, 0.0)
    assert all(math.isnan(x) for x in robust_location_scale([math.nan], min_relative_scale=0.02))


def test_an_obvious_outlier_turns_pass_into_review_with_its_z() -> None:
    vols = _group(N)
    vols[3] = dataclasses.replace(vols[3], metrics=_metrics(3, snr=12.0))
    verdicts = score_groups(vols)
    bad = verdicts["v03"]
    assert bad.decision == "review"
    assert len(bad.reasons) == 1 and bad.reasons[0].startswith("outlier_snr_z-")
    z = float(bad.reasons[0].removeprefix("outlier_snr_z"))
    assert z < -T.outlier_z and bad.outlier_score == pytest.approx(-bad.zs["snr"])
    assert bad.outlier_score == pytest.approx(-z, abs=0.05)
    others = [v for k, v in verdicts.items() if k != "v03"]
    assert all(v.decision == "pass" and v.reasons == () for v in others)
    assert all(0.0 <= v.outlier_score < T.outlier_z for v in others)


def test_only_the_bad_direction_counts() -> None:
    vols = _group(N)
    vols[0] = dataclasses.replace(vols[0], metrics=_metrics(0, snr=200.0))  # very clean: not a problem
    vols[1] = dataclasses.replace(vols[1], metrics=_metrics(1, inu=0.6))  # strong bias: a problem
    vols[2] = dataclasses.replace(vols[2], metrics=_metrics(2, brain_volume_ml=2600.0))  # "both": too big
    vols[3] = dataclasses.replace(vols[3], metrics=_metrics(3, inu=0.0))  # flat field: fine
    verdicts = score_groups(vols)
    assert verdicts["v00"].decision == "pass" and verdicts["v00"].zs["snr"] > T.outlier_z
    assert verdicts["v01"].decision == "review" and verdicts["v01"].reasons[0].startswith("outlier_inu_z+")
    assert verdicts["v02"].reasons[0].startswith("outlier_brain_volume_ml_z+")
    assert verdicts["v03"].decision == "pass"


def test_fail_stays_fail_and_review_keeps_its_reasons() -> None:
    vols = _group(N)
    vols[0] = dataclasses.replace(
        vols[0], metrics=_metrics(0, snr=5.0), decision="fail", reasons=("fov_coverage_below_0.90",)
    )
    vols[1] = dataclasses.replace(vols[1], metrics=_metrics(1, snr=5.0), decision="review", reasons=("snr_below_10",))
    verdicts = score_groups(vols)
    assert verdicts["v00"].decision == "fail" and verdicts["v00"].reasons == ("fov_coverage_below_0.90",)
    assert verdicts["v00"].outlier_score > T.outlier_z  # still scored, so the queue can sort it
    assert verdicts["v01"].decision == "review"
    assert verdicts["v01"].reasons[0] == "snr_below_10" and verdicts["v01"].reasons[1].startswith("outlier_snr_z-")


def test_small_groups_and_groups_are_separate() -> None:
    small = _group(T.min_group_size - 1, model="Small", prefix="s")
    small[0] = dataclasses.replace(small[0], metrics=_metrics(0, snr=1.0))
    big = _group(N, model="Prisma_fit", label="T1w")
    other_label = _group(N, model="Prisma_fit", label="T2w", prefix="t")
    # A T2w whose SNR would be an outlier among the T1w, but is typical of its own group.
    other_label = [dataclasses.replace(v, metrics={**v.metrics, "snr": v.metrics["snr"] / 4}) for v in other_label]
    verdicts = score_groups(small + big + other_label)
    assert verdicts["s00"].decision == "pass" and verdicts["s00"].outlier_score is None and verdicts["s00"].zs == {}
    assert all(verdicts[v.volume_id].decision == "pass" for v in other_label)


def test_nan_metrics_are_skipped_and_failed_volumes_do_not_set_the_norm() -> None:
    vols = _group(N)
    vols[0] = dataclasses.replace(vols[0], metrics=_metrics(0, snr=math.nan))  # zero-filled background
    verdicts = score_groups(vols)
    assert "snr" not in verdicts["v00"].zs and verdicts["v00"].decision == "pass"
    # Failed volumes are left out of the reference: with them the group would be too small.
    fails = [dataclasses.replace(v, decision="fail", reasons=("empty_mask",)) for v in _group(N, prefix="f")]
    short = _group(T.min_group_size - 1)
    assert all(v.outlier_score is None for v in score_groups(fails + short).values())


def test_stale_outlier_reasons_are_replaced_not_stacked() -> None:
    vols = _group(N)
    vols[5] = dataclasses.replace(vols[5], decision="review", reasons=("outlier_snr_z-9.9",))
    verdicts = score_groups(vols)
    assert verdicts["v05"].decision == "pass" and verdicts["v05"].reasons == ()


def test_unknown_direction_is_refused_with_the_fix() -> None:
    bad = dataclasses.replace(T, outlier_metrics=(("snr", "down"),))
    with pytest.raises(ValueError, match="'down' for 'snr'.*QCThresholds.outlier_metrics"):
        score_groups(_group(3), bad)


# ------------------------------------------------------------------------------------------- manifest


def _manifest(tmp_path: Path, vols: list[VolumeQC]) -> Manifest:
    m = Manifest(tmp_path).init()
    m.upsert(
        "volumes",
        [{"volume_id": v.volume_id, "model_name": v.group[0], "label": v.group[1], "updated_at": now()} for v in vols],
    )
    m.upsert("qc", [qc_row(v.volume_id, v.metrics, v.decision, v.reasons) for v in vols])
    return m


def test_apply_group_outliers_updates_the_manifest_and_is_idempotent(tmp_path: Path) -> None:
    vols = _group(N)
    vols[2] = dataclasses.replace(vols[2], metrics=_metrics(2, qi1=0.004, efc=0.7))
    vols[4] = dataclasses.replace(vols[4], metrics=_metrics(4, efc=0.9), decision="fail", reasons=("empty_mask",))
    m = _manifest(tmp_path, vols)
    m.upsert("ratings", [{"volume_id": "v02", "rating": "pass", "rater": "ana", "updated_at": now()}])
    before = m.query("SELECT * FROM ratings")

    assert apply_group_outliers(m) == 1
    rows = {r["volume_id"]: r for r in m.query("SELECT volume_id, decision, reasons, outlier_score FROM qc")}
    assert rows["v02"]["decision"] == "review"
    assert [r.split("_z")[0] for r in rows["v02"]["reasons"]] == ["outlier_efc"]  # qi1: MAD 0 and median 0
    assert rows["v02"]["outlier_score"] > T.outlier_z
    assert rows["v04"]["decision"] == "fail" and rows["v04"]["reasons"] == ["empty_mask"]
    assert all(r["outlier_score"] is not None for r in rows.values())
    assert m.query("SELECT * FROM ratings") == before  # the human rating is untouched

    stamp = m.scalar("SELECT max(updated_at) FROM qc")
    assert apply_group_outliers(m) == 1  # rerun: same verdicts, nothing rewritten
    assert m.query("SELECT volume_id, decision, reasons, outlier_score FROM qc ORDER BY volume_id") == sorted(
        rows.values(), key=lambda r: r["volume_id"]
    )
    assert m.scalar("SELECT max(updated_at) FROM qc") == stamp

    # QC reran on v02 and it came out typical: the outlier verdict goes away on the next group pass.
    m.upsert("qc", [qc_row("v02", _metrics(2), "pass", [])])
    assert apply_group_outliers(m) == 0
    assert m.query("SELECT decision, reasons FROM qc WHERE volume_id = 'v02'") == [{"decision": "pass", "reasons": []}]


def test_apply_group_outliers_on_an_empty_manifest(tmp_path: Path) -> None:
    assert apply_group_outliers(Manifest(tmp_path).init()) == 0
