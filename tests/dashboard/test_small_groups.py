"""Queue order for a corpus of many scanners with two volumes each (issue 12).

Within a group of two the robust z of both volumes is 0.6745 in every metric, so scoring inside such
groups orders the queue arbitrarily. Small groups fall back to a pooled reference (sequence class,
then the whole corpus); the volume that is extreme in that pool must come first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dashboard.app import create_app
from tasks.context import open_warehouse
from warehouse import review_queries as rq
from warehouse.manifest import now

# 9 scanner models x 2 volumes: 6 models of T1w, 3 of FLAIR, with scanner offsets on SNR of real-world
# size (a 1.5 T and a 3 T scanner differ by ~30 %). One T1w volume missed the bottom of the brain
# (FOV coverage 0.80, below the 0.90 floor): the QC hard rules sent it to review.
MODELS_T1 = ("Prisma", "Skyra", "Vida", "Ingenia", "Achieva", "Discovery")
MODELS_FLAIR = ("Signa", "Aera", "Avanto")
FLAGGED = "vol-t1-Ingenia-1"


def _rows() -> list[dict]:
    rng = np.random.default_rng(12)
    rows = []
    for label, models in (("T1w", MODELS_T1), ("FLAIR", MODELS_FLAIR)):
        for k, model in enumerate(models):
            base = 18.0 + 1.5 * k
            for i in range(2):
                vid = f"vol-{label[:2].lower()}-{model}-{i}"
                snr = base + rng.normal(0, 0.5)
                fov = 0.80 if vid == FLAGGED else 0.97 + rng.normal(0, 0.005)
                rows.append(
                    {
                        "volume_id": vid,
                        "series_key": f"ser-{vid[4:]}",
                        "subject_id": f"sub-{model.lower()}{i}",
                        "label": label,
                        "model_name": model,
                        "decision": "review" if vid == FLAGGED else "pass",
                        "snr": float(snr),
                        "cnr": float(3.0 + rng.normal(0, 0.1)),
                        "brain_volume_ml": float(1200 + rng.normal(0, 100)),
                        "fov_coverage": float(fov),
                        "similarity": float(0.93 + rng.normal(0, 0.01)),
                    }
                )
    return rows


ROWS = _rows()


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    m = open_warehouse(tmp_path / "warehouse").manifest
    t = now()
    m.upsert(
        "volumes",
        [
            {k: r[k] for k in ("volume_id", "series_key", "subject_id", "label", "model_name")}
            | {"manufacturer": "x", "similarity": r["similarity"], "fov_coverage": r["fov_coverage"], "updated_at": t}
            for r in ROWS
        ],
    )
    m.upsert(
        "qc",
        [{k: r[k] for k in ("volume_id", "decision", *rq.METRICS)} | {"reasons": [], "updated_at": t} for r in ROWS],
    )
    return TestClient(create_app(tmp_path / "warehouse"), base_url="http://127.0.0.1")


def _robust_z(x: float, pool: list[float]) -> float:
    """|x - median| / max(1.4826 MAD, 2 % of |median|), computed independently of the SQL."""
    v = np.asarray(pool)
    med = np.median(v)
    scale = max(rq.MAD_TO_SD * np.median(np.abs(v - med)), rq.MIN_RELATIVE_SCALE * abs(med))
    return float(abs(x - med) / scale)


def test_pairs_are_scored_against_their_class_and_the_flagged_volume_comes_first(client: TestClient):
    body = client.get("/api/queue", params={"limit": 50}).json()
    rows = body["rows"]
    assert body["total"] == len(ROWS) == 18
    assert rows[0]["volume_id"] == FLAGGED
    assert rows[0]["top_metric"] == "fov_coverage"
    scores = [r["score"] for r in rows]
    assert len({round(s, 6) for s in scores}) > len(scores) // 2  # not one value shared by every volume
    assert all(abs(s - 0.6745) > 1e-3 for s in scores[:3])
    # every model x class group has 2 volumes; T1w pools 12 volumes, FLAIR only 6: both pool by class
    assert {(r["label"], r["ref_level"]) for r in rows} == {("T1w", "class"), ("FLAIR", "class")}
    t1_fov = [r["fov_coverage"] for r in ROWS if r["label"] == "T1w"]
    assert rows[0]["score"] == pytest.approx(_robust_z(0.80, t1_fov), rel=1e-9)


def test_detail_percentiles_use_the_same_pool(client: TestClient):
    d = client.get(f"/api/volumes/{FLAGGED}").json()
    assert d["group_n"] == 2 and d["ref_level"] == "class" and d["ref_n"] == 12
    assert d["percentiles"]["fov_coverage"]["n"] == 12
    assert d["percentiles"]["fov_coverage"]["percentile"] == pytest.approx(100 * 0.5 / 12)  # lowest of 12
    assert d["z_fov_coverage"] == pytest.approx(d["score"])


def test_a_corpus_too_small_for_any_class_pool_falls_back_to_all_volumes(tmp_path: Path):
    m = open_warehouse(tmp_path / "w").manifest
    t = now()
    few = [r for r in ROWS if r["model_name"] in ("Prisma", "Signa")]  # 2 T1w + 2 FLAIR
    m.upsert(
        "volumes",
        [
            {k: r[k] for k in ("volume_id", "series_key", "subject_id", "label", "model_name")} | {"updated_at": t}
            for r in few
        ],
    )
    m.upsert("qc", [{k: r[k] for k in ("volume_id", "decision", *rq.METRICS)} | {"updated_at": t} for r in few])
    rows = TestClient(create_app(tmp_path / "w"), base_url="http://127.0.0.1").get("/api/queue").json()["rows"]
    assert {r["ref_level"] for r in rows} == {"all"}
    top = rows[0]
    assert top["score"] == pytest.approx(max(_robust_z(top[c], [r[c] for r in few]) for c in rq.METRICS), rel=1e-9)
