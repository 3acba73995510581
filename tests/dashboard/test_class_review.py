"""Class review in the dashboard: held series with PHI-free facts, the explanation, a mosaic when the
series was converted, and one-key labels stored through the warehouse function the CLI uses."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dashboard.app import create_app
from tasks.review import pending_reviews, review_label
from tests.dashboard.conftest import PHI_SENTINEL, VOLUMES
from tests.dashboard.test_browser import page, server_url  # noqa: F401  (fixtures)
from warehouse.manifest import Manifest, now


def _key(name: str) -> str:
    return "ser-" + hashlib.sha256(("held" + name).encode()).hexdigest()[:16]


HELD_BEFORE = sum(v.decision == "review" for v in VOLUMES)  # the fixture flags its review volumes' class too
UNSURE = _key("unsure")  # confidence 0.40, converted earlier: has a native image
CONFLICT = _key("conflict")  # confidence 0.55, never converted


def add_held_series(warehouse: Path) -> None:
    m = Manifest(warehouse)
    subject = VOLUMES[0].subject_id
    src = m.query("SELECT native_path FROM volumes WHERE volume_id = ?", [VOLUMES[0].volume_id])[0]["native_path"]
    dst = warehouse / "derivatives" / subject / UNSURE / "native.nii.gz"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(warehouse / src, dst)
    t = now()
    m.upsert(
        "series",
        [
            {
                "series_key": key,
                "subject_id": subject,
                "study_id": "stu-" + subject[4:],
                "modality": "MR",
                "manufacturer": "GE",
                "model_name": "Signa Premier",
                "field_strength": 3.0,
                "n_instances": 176,
                "series_number": number,
                "series_description": f"{PHI_SENTINEL} mystery",
                "study_date_shifted": "2023-03-01",
                "state": "review",
                "reason": "needs_review",
                "updated_at": t,
            }
            for key, number in ((UNSURE, 7), (CONFLICT, 9))
        ],
    )
    m.upsert(
        "classification",
        [
            {
                "series_key": UNSURE,
                "label": "T1w",
                "contrast_enhanced": False,
                "confidence": 0.40,
                "explanation": "T1w because short TR/TE, but TE 2.1 ms also fits proton density",
                "needs_review": True,
                "updated_at": t,
            },
            {
                "series_key": CONFLICT,
                "label": "T2w",
                "contrast_enhanced": False,
                "confidence": 0.55,
                "explanation": "T2w because long TE; description keyword says FLAIR",
                "needs_review": True,
                "updated_at": t,
            },
        ],
    )


@pytest.fixture
def client(warehouse: Path) -> TestClient:
    add_held_series(warehouse)
    return TestClient(create_app(warehouse, rater="tester"), base_url="http://127.0.0.1")


def test_held_series_are_listed_least_confident_first_without_phi(client: TestClient):
    r = client.get("/api/class-reviews")
    assert r.status_code == 200 and PHI_SENTINEL not in r.text
    body = r.json()
    assert [row["series_key"] for row in body["rows"]][:2] == [UNSURE, CONFLICT]
    assert body["total"] == len(body["rows"]) == 2 + HELD_BEFORE
    assert body["labels"] == ["T1w", "T2w", "FLAIR", "other"]
    d = client.get(f"/api/class-reviews/{UNSURE}").json()
    assert d["model_name"] == "Signa Premier" and d["n_instances"] == 176 and "proton density" in d["explanation"]
    assert "series_description" not in d and not any(k.endswith("_path") for k in d)
    assert d["image"] == f"/api/class-reviews/{UNSURE}/native.png"
    png = client.get(d["image"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/api/class-reviews/{CONFLICT}").json()["image"] is None
    assert client.get(f"/api/class-reviews/{CONFLICT}/native.png").status_code == 404
    assert client.get("/api/class-reviews/ser-unknown").status_code == 404
    assert client.get("/api/class-reviews/..%2Fetc").status_code in (404, 422)


def test_a_label_is_stored_like_the_cli_stores_it(client: TestClient, warehouse: Path):
    r = client.put(f"/api/class-reviews/{CONFLICT}", json={"label": "FLAIR", "note": "keyword was right"})
    assert r.status_code == 200 and r.json()["remaining"] == 1 + HELD_BEFORE
    m = Manifest(warehouse)
    got = review_label(m, CONFLICT)
    assert got is not None and (got.label, got.reviewer, got.note) == ("FLAIR", "tester", "keyword was right")
    assert m.query("SELECT state, reason FROM series WHERE series_key = ?", [CONFLICT]) == [
        {"state": "review", "reason": "review_label"}
    ]
    assert [i.series_key for i in pending_reviews(m)][0] == UNSURE
    assert CONFLICT not in {i.series_key for i in pending_reviews(m)}
    assert client.put(f"/api/class-reviews/{UNSURE}", json={"label": "T3w"}).status_code == 422
    assert client.put("/api/class-reviews/ser-unknown", json={"label": "T1w"}).status_code == 404
    cross = client.put(
        f"/api/class-reviews/{UNSURE}", json={"label": "other"}, headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and review_label(m, UNSURE) is None


@pytest.mark.browser
def test_one_key_labels_in_the_browser(warehouse: Path, server_url: str, page):  # noqa: F811
    add_held_series(warehouse)
    page.goto(f"{server_url}/#/class-review")
    page.wait_for_selector(f'#class-queue tbody tr[data-key="{UNSURE}"].selected')
    assert page.locator("#class-queue tbody tr").count() == 2 + HELD_BEFORE
    assert page.is_hidden("main") and page.is_visible("#class-view")
    page.wait_for_function(f"() => document.querySelector('#class-title').textContent === '{UNSURE}'")
    page.wait_for_function(
        "() => { const i = document.querySelector('#class-img'); return i.complete && i.naturalWidth > 0; }"
    )
    assert "proton density" in page.inner_text("#class-explanation")
    assert "Signa Premier" in page.inner_text("#class-facts")
    assert PHI_SENTINEL not in page.content()
    assert page.inner_text("#class-count") == str(2 + HELD_BEFORE)
    assert page.evaluate("() => location.hash") == f"#/class-review/{UNSURE}"

    page.keyboard.press("1")  # T1w for the unsure series; the next one opens
    page.wait_for_selector(f'#class-status[data-saved="{UNSURE}:T1w"]', state="attached")
    page.wait_for_function(f"() => document.querySelector('#class-title').textContent === '{CONFLICT}'")
    assert page.is_visible("#class-noimg")  # never converted: the view says so instead of a broken image
    m = Manifest(warehouse)
    got = review_label(m, UNSURE)
    assert got is not None and (got.label, got.reviewer) == ("T1w", "browser-rater")
    assert page.inner_text("#class-count") == str(1 + HELD_BEFORE)
    # QC keys do nothing here: 'f' would fail a QC volume in the queue view
    page.keyboard.press("f")
    page.keyboard.press("3")
    page.wait_for_selector(f'#class-status[data-saved="{CONFLICT}:FLAIR"]', state="attached")
    assert m.count("ratings") == 0
    assert review_label(m, CONFLICT).label == "FLAIR"
    page.wait_for_function(f"() => document.querySelector('#class-count').textContent === '{HELD_BEFORE}'")
    assert page.locator("#class-queue tbody tr").count() == HELD_BEFORE
    page.click("#nav-qc")
    page.wait_for_function("() => !document.querySelector('main').hidden")
    assert page.is_hidden("#class-view")
