"""Dashboard API on a small curated warehouse: queue order and filters, pages, histograms, volume
detail, images, ratings (stored, overriding, honoured by the shard queries) and rating export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dashboard import images
from dashboard.app import create_app
from tests.dashboard.conftest import OUTLIER, PASSING, PHI_SENTINEL, VOLUMES
from warehouse import ratings
from warehouse import review_queries as rq
from warehouse.manifest import Manifest, now
from warehouse.queries import sharded_passing_volumes, volumes_to_shard


@pytest.fixture
def client(warehouse: Path) -> TestClient:
    return TestClient(create_app(warehouse, rater="tester"), base_url="http://127.0.0.1")


def ids(resp) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [r["volume_id"] for r in resp.json()["rows"]]


def test_queue_orders_by_robust_outlier_score(client: TestClient):
    body = client.get("/api/queue").json()
    assert body["total"] == len(VOLUMES)
    scores = [r["score"] for r in body["rows"]]
    assert scores == sorted(scores, reverse=True)
    top = body["rows"][0]
    assert top["volume_id"] == OUTLIER.volume_id
    # z = |x - median| / max(1.4826 MAD, 2 % of |median|) in the 6-volume Prisma T1w group
    group = [v for v in VOLUMES if (v.model, v.label) == (OUTLIER.model, OUTLIER.label)]

    def z(attr: str) -> float:
        x = np.array([getattr(v, attr) for v in group])
        med = np.median(x)
        return abs(getattr(OUTLIER, attr) - med) / max(1.4826 * np.median(np.abs(x - med)), 0.02 * abs(med))

    expected = {"fov_coverage": z("fov"), "similarity": z("sim")}
    assert top["top_metric"] == max(expected, key=expected.__getitem__) == "fov_coverage"
    assert top["score"] == pytest.approx(max(expected.values()), rel=1e-6)


def test_filters_select_the_right_volumes(client: TestClient):
    assert set(ids(client.get("/api/queue", params={"decision": "review"}))) == {
        v.volume_id for v in VOLUMES if v.decision == "review"
    }
    assert set(ids(client.get("/api/queue", params={"label": "FLAIR"}))) == {
        v.volume_id for v in VOLUMES if v.label == "FLAIR"
    }
    assert len(ids(client.get("/api/queue", params={"scanner": "Prisma", "decision": "pass"}))) == 4
    dated = ids(client.get("/api/queue", params={"date_from": "2023-04-01", "date_to": "2023-12-31"}))
    assert set(dated) == {v.volume_id for v in VOLUMES if "2023-04-01" <= v.date <= "2023-12-31"}
    low_snr = ids(client.get("/api/queue", params={"snr_max": "10"}))
    assert low_snr == [v.volume_id for v in VOLUMES if v.snr <= 10]
    band = ids(client.get("/api/queue", params={"snr_min": "15", "snr_max": "20", "fov_coverage_min": "0.9"}))
    assert set(band) == {v.volume_id for v in VOLUMES if 15 <= v.snr <= 20 and v.fov >= 0.9}
    assert ids(client.get("/api/queue", params={"q": PASSING.volume_id[:10]})) == [PASSING.volume_id]
    assert ids(client.get("/api/queue", params={"rated": "true"})) == []


def test_keyset_pages_cover_the_queue_once_in_order(client: TestClient):
    full = ids(client.get("/api/queue"))
    seen, cursor = [], None
    for _ in range(10):
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/queue", params=params).json()
        seen += [r["volume_id"] for r in body["rows"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == full
    by_id = ids(client.get("/api/queue", params={"sort": "volume", "limit": 5}))
    assert by_id == sorted(v.volume_id for v in VOLUMES)[:5]
    assert ids(client.get("/api/queue", params={"offset": 7})) == full[7:]


def test_histograms_count_the_filtered_volumes(client: TestClient):
    h = client.get("/api/histograms", params={"bins": 10}).json()
    assert set(h) == set(rq.METRICS)
    for metric in rq.METRICS:
        assert sum(h[metric]["counts"]) == len(VOLUMES) == h[metric]["n"]
    assert h["snr"]["lo"] == 9.0 and h["snr"]["hi"] == 21.0
    assert h["snr"]["counts"][0] == 1  # the low-SNR volume sits alone in the first bin
    flair = client.get("/api/histograms", params={"label": "FLAIR"}).json()
    assert flair["snr"]["n"] == 3 and flair["snr"]["lo"] == 14.5


def test_volume_detail_has_percentiles_explanation_and_no_paths(client: TestClient):
    d = client.get(f"/api/volumes/{OUTLIER.volume_id}").json()
    assert d["group_n"] == 6 and d["label"] == "T1w" and d["model_name"] == "Prisma"
    assert "because" in d["explanation"]
    assert d["reasons"] == ["fov_coverage_low"]
    # lowest similarity of its 6-volume group: mid-rank percentile 0.5/6
    assert d["percentiles"]["similarity"]["percentile"] == pytest.approx(100 * 0.5 / 6)
    assert d["percentiles"]["similarity"]["median"] == pytest.approx(0.945)
    assert set(d["metrics_extra"]) == {"cjv", "efc"}  # the non-numeric "bad" entry is dropped
    assert d["percentiles"]["cjv"]["n"] == 6
    assert d["images"]["overlay"].endswith("/overlay.png")
    assert not any(k.endswith("_path") for k in d)
    assert client.get("/api/volumes/vol-doesnotexist").status_code == 404


@pytest.mark.parametrize("kind", images.KINDS)
def test_images_render_as_cached_pngs(client: TestClient, warehouse: Path, kind: str):
    url = f"/api/volumes/{OUTLIER.volume_id}/image/{kind}.png"
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (images.COLUMNS * images.TILE + (images.COLUMNS - 1) * images.GAP, 3 * images.TILE + 2 * 2)
    cached = list((warehouse / images.CACHE_DIR).glob(f"{OUTLIER.volume_id}-{kind}-*.png"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert client.get(url).content == r.content
    assert cached[0].stat().st_mtime_ns == mtime  # served from the cache, not re-rendered


def test_registered_view_draws_the_mask_contour_and_overlay_the_template(client: TestClient):
    reg = np.asarray(
        Image.open(io.BytesIO(client.get(f"/api/volumes/{PASSING.volume_id}/image/registered.png").content))
    )
    assert np.all(reg == images.MASK_RGB, axis=-1).sum() > 500
    ov = np.asarray(Image.open(io.BytesIO(client.get(f"/api/volumes/{OUTLIER.volume_id}/image/overlay.png").content)))
    assert np.all(ov == images.TEMPLATE_RGB, axis=-1).sum() > 500
    assert np.all(ov == images.FOV_RGB, axis=-1).sum() > 50  # the outlier's truncated field of view


def test_native_view_keeps_physical_aspect(tmp_path: Path):
    import nibabel as nib

    data = np.zeros((40, 40, 10), np.float32)
    data[5:35, 5:35, 1:9] = 1.0
    path = tmp_path / "n.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 4.0, 1.0])), str(path))
    png = np.asarray(Image.open(io.BytesIO(images.render("native", path))))
    first_sagittal = png[: images.TILE, : images.TILE].max(axis=-1) > 0
    rows, cols = np.nonzero(first_sagittal)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    # 8 slices x 4 mm = 32 mm tall vs 30 mm wide: nearly square, not 8 px vs 30 px
    assert 0.9 < height / width < 1.3


def test_rating_is_stored_overrides_and_is_honoured_by_the_shard_queries(client: TestClient, warehouse: Path):
    m = Manifest(warehouse)
    assert PASSING.volume_id in {r["volume_id"] for r in volumes_to_shard(m)}
    r = client.put(
        f"/api/volumes/{PASSING.volume_id}/rating",
        json={"rating": "fail", "tags": ["motion", "noise"], "note": "ringing", "rater": "dr who"},
    )
    assert r.status_code == 200, r.text
    row = m.query("SELECT * FROM ratings WHERE volume_id = ?", [PASSING.volume_id])[0]
    assert (row["rating"], row["rater"], row["tags"], row["note"]) == ("fail", "dr who", ["motion", "noise"], "ringing")
    assert row["updated_at"] is not None
    assert PASSING.volume_id not in {r["volume_id"] for r in volumes_to_shard(m)}
    assert ids(client.get("/api/queue", params={"decision": "fail", "rated": "true"})) == [PASSING.volume_id]
    d = client.get(f"/api/volumes/{PASSING.volume_id}").json()
    assert (d["decision"], d["auto_decision"], d["rater"]) == ("fail", "pass", "dr who")
    # a failed volume rated pass by a human joins the next shard build
    assert client.put(f"/api/volumes/{OUTLIER.volume_id}/rating", json={"rating": "pass"}).status_code == 200
    assert OUTLIER.volume_id in {r["volume_id"] for r in volumes_to_shard(m)}
    assert m.scalar("SELECT rater FROM ratings WHERE volume_id = ?", [OUTLIER.volume_id]) == "tester"
    # clearing restores the automatic decision
    assert client.delete(f"/api/volumes/{PASSING.volume_id}/rating").json()["cleared"] is True
    assert PASSING.volume_id in {r["volume_id"] for r in volumes_to_shard(m)}


def test_fail_rating_drops_an_already_sharded_volume_from_the_next_snapshot(client: TestClient, warehouse: Path):
    m = Manifest(warehouse)
    m.upsert("shard_volumes", [{"volume_id": v.volume_id, "shard_id": "sh-1", "batch_index": 0} for v in VOLUMES])
    assert PASSING.volume_id in sharded_passing_volumes(m)
    client.put(f"/api/volumes/{PASSING.volume_id}/rating", json={"rating": "review"})
    assert PASSING.volume_id not in sharded_passing_volumes(m)


def test_ratings_export_csv_and_json(client: TestClient):
    client.put(f"/api/volumes/{PASSING.volume_id}/rating", json={"rating": "fail", "tags": ["motion"], "note": "=1+1"})
    client.put(f"/api/volumes/{OUTLIER.volume_id}/rating", json={"rating": "pass", "note": "fine, really"})
    j = client.get("/api/ratings.json")
    assert j.headers["content-disposition"].startswith("attachment")
    rows = json.loads(j.text)
    assert [r["volume_id"] for r in rows] == [PASSING.volume_id, OUTLIER.volume_id]
    assert rows[0]["auto_decision"] == "pass" and rows[0]["rating"] == "fail" and rows[0]["tags"] == ["motion"]
    c = client.get("/api/ratings.csv")
    assert c.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(c.text)))
    assert list(parsed[0]) == list(ratings.EXPORT_COLUMNS)
    assert parsed[0]["note"] == "'=1+1"  # spreadsheet formula neutralised
    assert parsed[1]["note"] == "fine, really" and parsed[1]["rater"] == "tester"


def test_invalid_ratings_are_refused_with_reasons(client: TestClient):
    url = f"/api/volumes/{PASSING.volume_id}/rating"
    assert client.put(url, json={"rating": "maybe"}).status_code == 422
    bad_tag = client.put(url, json={"rating": "fail", "tags": ["ghosts"]})
    assert bad_tag.status_code == 422 and "ghosts" in bad_tag.text
    assert client.put(url, json={"rating": "fail", "note": "x" * (ratings.MAX_NOTE + 1)}).status_code == 422
    assert client.put(url, json={"rating": "fail", "rater": "<script>"}).status_code == 422
    assert client.put("/api/volumes/vol-unknown/rating", json={"rating": "fail"}).status_code == 404
    assert Manifest(client.app.state.warehouse).count("ratings") == 0


def test_no_response_contains_phi(client: TestClient):
    client.put(f"/api/volumes/{PASSING.volume_id}/rating", json={"rating": "fail"})
    bodies = [
        client.get(u).text
        for u in (
            "/api/facets",
            "/api/queue",
            "/api/histograms",
            f"/api/volumes/{PASSING.volume_id}",
            "/api/ratings.csv",
            "/api/ratings.json",
        )
    ]
    assert all(PHI_SENTINEL not in b and "series_description" not in b for b in bodies)


def test_facets_list_filter_values(client: TestClient):
    f = client.get("/api/facets").json()
    assert [x["value"] for x in f["label"]] == ["FLAIR", "T1w"]
    assert {x["value"]: x["n"] for x in f["scanner"]} == {"Ingenia": 3, "Prisma": 6}
    assert (f["date_min"], f["date_max"]) == ("2023-03-01", "2024-02-01")
    assert f["default_rater"] == "tester" and f["tags"] == list(ratings.ARTIFACT_TAGS)


def test_page_and_assets_are_local_with_a_strict_csp(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and 'id="queue"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "innerHTML" not in js.text


def test_score_cache_follows_manifest_changes_and_ratings_stay_live(warehouse: Path):
    client = TestClient(create_app(warehouse, max_age_s=0.0), base_url="http://127.0.0.1")
    index = client.app.state.index
    assert ids(client.get("/api/queue"))[0] == OUTLIER.volume_id
    builds = index.rebuilds
    client.put(f"/api/volumes/{OUTLIER.volume_id}/rating", json={"rating": "pass"})
    assert client.get("/api/queue").json()["rows"][0]["decision"] == "pass"
    assert index.rebuilds == builds  # a rating is joined live, the scores are not recomputed
    m = Manifest(warehouse)
    row = m.query("SELECT * FROM qc WHERE volume_id = ?", [PASSING.volume_id])[0]
    m.upsert("qc", [{**row, "snr": 500.0, "updated_at": now()}])  # a re-run of QC changes one metric
    top = client.get("/api/queue").json()["rows"][0]
    assert index.rebuilds == builds + 1
    assert (top["volume_id"], top["top_metric"]) == (PASSING.volume_id, "snr")


def test_nan_metrics_count_as_missing(client: TestClient, warehouse: Path):
    Manifest(warehouse).execute(
        "UPDATE qc SET snr = 'NaN'::DOUBLE, cnr = 'inf'::DOUBLE, updated_at = now() WHERE volume_id = ?",
        [PASSING.volume_id],
    )
    body = client.get("/api/queue").json()  # strict JSON: a NaN would fail to serialise
    row = next(r for r in body["rows"] if r["volume_id"] == PASSING.volume_id)
    assert row["snr"] is None and row["cnr"] is None
    assert client.get("/api/histograms").json()["snr"]["n"] == len(VOLUMES) - 1
    d = client.get(f"/api/volumes/{PASSING.volume_id}").json()
    assert "snr" not in d["percentiles"] and d["z_snr"] is None


def test_rerendered_volume_replaces_its_stale_png(client: TestClient, warehouse: Path):
    url = f"/api/volumes/{PASSING.volume_id}/image/native.png"
    first = client.get(url).content
    rel = Manifest(warehouse).scalar("SELECT native_path FROM volumes WHERE volume_id = ?", [PASSING.volume_id])
    import nibabel as nib

    src = warehouse / rel
    img = nib.load(str(src))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), str(src))  # re-curated
    second = client.get(url).content
    assert second != first
    assert len(list((warehouse / images.CACHE_DIR).glob(f"{PASSING.volume_id}-native-*.png"))) == 1


def test_manifest_locked_by_another_process_answers_503(client: TestClient, warehouse: Path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
            str(warehouse / "manifest.duckdb"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = client.get("/api/queue")
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and "locked" in r.json()["detail"]
    finally:
        holder.communicate("", timeout=30)
    assert client.get("/api/queue").status_code == 200


def test_changes_by_other_processes_show_after_max_age(warehouse: Path):
    client = TestClient(create_app(warehouse, max_age_s=60.0), base_url="http://127.0.0.1")
    assert ids(client.get("/api/queue", params={"rated": "true"})) == []
    ratings.upsert_rating(Manifest(warehouse), PASSING.volume_id, "fail", "other-process")  # not through the app
    assert ids(client.get("/api/queue", params={"rated": "true"})) == []  # within max_age: cached
    client.app.state.index.max_age_s = 0.0
    assert ids(client.get("/api/queue", params={"rated": "true"})) == [PASSING.volume_id]
    # the app's own writes are visible at once, whatever max_age
    client.app.state.index.max_age_s = 60.0
    assert client.delete(f"/api/volumes/{PASSING.volume_id}/rating").json()["cleared"] is True
    assert ids(client.get("/api/queue", params={"rated": "true"})) == []


def test_unreadable_nifti_is_a_404_with_the_reason(client: TestClient, warehouse: Path):
    rel = Manifest(warehouse).scalar("SELECT native_path FROM volumes WHERE volume_id = ?", [PASSING.volume_id])
    (warehouse / rel).write_bytes(b"\x1f\x8b\x08\x00truncated")
    r = client.get(f"/api/volumes/{PASSING.volume_id}/image/native.png")
    assert r.status_code == 404 and "could not be read" in r.json()["detail"]


def test_a_volume_path_redirects_to_its_page(client: TestClient):
    r = client.get(f"/volume/{PASSING.volume_id}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/#/volume/{PASSING.volume_id}"
    assert client.get("/volume/bad id!", follow_redirects=False).status_code == 422
