"""The dashboard in headless Chromium: open it, rate a volume with the keyboard, and check that the
rating is in DuckDB and changes the next snapshot.

Needs Debian's chromium (`apt-get install chromium`) and the playwright pip package; Playwright's own
browser download is not used. Set MRIFOUNDRY_SCREENSHOT_DIR to keep a screenshot of the page.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.server import build_server
from tasks.context import open_warehouse
from tasks.shards import build_shards
from tests.dashboard.conftest import OUTLIER, PASSING, VOLUMES
from warehouse.manifest import Manifest
from warehouse.queries import latest_snapshot

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MRIFOUNDRY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server_url(warehouse: Path) -> Iterator[str]:
    """The dashboard on a free 127.0.0.1 port in a background thread, stopped after the test."""
    server = build_server(warehouse, "127.0.0.1", 0, rater="browser-rater", log_level="warning")
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "dashboard server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "dashboard server did not stop"


@pytest.fixture
def page(server_url: str):
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `apt-get install -y chromium` (or set MRIFOUNDRY_CHROMIUM)")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("the browser tests need playwright: .venv/bin/pip install playwright==1.65.2")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            pg.goto(server_url)
            yield pg
            assert errors == [], f"browser errors: {errors}"
        finally:
            browser.close()


def _snapshot_members(m: Manifest, snapshot_id: str) -> set[str]:
    rows = m.query("SELECT volume_id FROM snapshot_volumes WHERE snapshot_id = ?", [snapshot_id])
    return {r["volume_id"] for r in rows}


def test_keyboard_rating_reaches_duckdb_and_the_next_snapshot(page, warehouse: Path):
    ctx = open_warehouse(warehouse)
    m = ctx.manifest
    before = build_shards(ctx)
    assert before.snapshot_id and PASSING.volume_id in _snapshot_members(m, before.snapshot_id)

    # the queue opens with the strongest outlier selected and its images loaded
    page.wait_for_selector(f'#queue tbody tr[data-id="{OUTLIER.volume_id}"].selected')
    assert page.locator("#queue tbody tr").count() == len(VOLUMES)
    page.wait_for_function("() => document.querySelector('#vol-title').textContent.length > 0")
    assert page.inner_text("#vol-title") == OUTLIER.volume_id
    page.wait_for_function(
        "() => ['native', 'registered', 'overlay'].every(k => {"
        "const i = document.querySelector('#img-' + k); return i.complete && i.naturalWidth > 0; })"
    )
    assert page.locator("#histograms figure").count() == 5
    assert page.locator("#histograms line.current").count() == 5  # the current volume is marked
    if os.environ.get("MRIFOUNDRY_SCREENSHOT_DIR"):
        shots = Path(os.environ["MRIFOUNDRY_SCREENSHOT_DIR"])
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "dashboard.png"), full_page=False)

    # move to the passing volume with the keyboard, tag it (key 1 = motion) and fail it (key f)
    row_ids = page.eval_on_selector_all("#queue tbody tr", "rows => rows.map(r => r.dataset.id)")
    target = row_ids.index(PASSING.volume_id)
    for _ in range(target):
        page.keyboard.press("j")
    page.wait_for_function(f"() => document.querySelector('#vol-title').textContent === '{PASSING.volume_id}'")
    page.keyboard.press("1")
    page.keyboard.press("f")
    page.wait_for_selector(f'#rating-status[data-saved="{PASSING.volume_id}:fail"]', state="attached")
    badge = page.locator(f'#queue tbody tr[data-id="{PASSING.volume_id}"] .badge')
    assert badge.inner_text() == "fail"

    row = m.query("SELECT rating, rater, tags, updated_at FROM ratings WHERE volume_id = ?", [PASSING.volume_id])
    assert len(row) == 1
    assert (row[0]["rating"], row[0]["rater"], row[0]["tags"]) == ("fail", "browser-rater", ["motion"])
    assert row[0]["updated_at"] is not None

    after = build_shards(ctx)
    assert after.snapshot_created and after.snapshot_id != before.snapshot_id
    assert latest_snapshot(m) == after.snapshot_id
    assert _snapshot_members(m, after.snapshot_id) == _snapshot_members(m, before.snapshot_id) - {PASSING.volume_id}


def test_filters_and_histogram_click_narrow_the_queue(page, warehouse: Path):
    # manifest text is shown as text: markup in an explanation must not run
    Manifest(warehouse).execute(
        "UPDATE classification SET explanation = ?",
        ['<img src=x onerror="document.body.dataset.pwned=1"> T2_TSE'],
    )
    page.reload()
    page.wait_for_selector("#queue tbody tr.selected")
    page.wait_for_function("() => document.querySelector('#explanation').textContent.includes('T2_TSE')")
    assert "<img src=x" in page.inner_text("#explanation")
    assert page.locator("#explanation img").count() == 0
    assert page.evaluate("() => document.body.dataset.pwned") is None
    page.select_option("#f-label", "FLAIR")
    page.wait_for_function("() => document.querySelectorAll('#queue tbody tr').length === 3")
    assert page.inner_text("#page-info").endswith("of 3")
    page.fill('input[name="snr_max"]', "15")
    page.wait_for_function("() => document.querySelectorAll('#queue tbody tr').length === 2")
    page.click("#reset")
    page.wait_for_function(f"() => document.querySelectorAll('#queue tbody tr').length === {len(VOLUMES)}")
    # clicking the first SNR bar filters to the volumes in that bin (the low-SNR one)
    page.wait_for_selector(f'#histograms figure[data-metric="snr"] figcaption:text-is("snr (n={len(VOLUMES)})")')
    page.locator('#histograms figure[data-metric="snr"] rect.bar').first.click()
    page.wait_for_function("() => document.querySelectorAll('#queue tbody tr').length === 1")
    low_snr = min(VOLUMES, key=lambda v: v.snr)
    assert page.locator("#queue tbody tr").first.get_attribute("data-id") == low_snr.volume_id


LONG_METRICS = {
    "mask_mni_dice": 0.912345678,
    "snr_wm": 12345.678901,
    "wm2max": 0.512345678,
    "qi1": 1.23456e-5,
    "inu_field_coefficient_of_variation": 0.123456789,
    "efc": 0.54321,
    "cjv": 0.45678,
}

LAYOUT_PROBLEMS = """() => {
  const out = [];
  const check = (tableSel, boxSel) => {
    const box = document.querySelector(boxSel);
    const right = box.getBoundingClientRect().right + 0.5;
    if (box.scrollWidth > box.clientWidth + 1) out.push(`${boxSel} scrolls sideways`);
    for (const th of document.querySelectorAll(`${tableSel} th`)) {
      if (th.getBoundingClientRect().right > right) out.push(`${tableSel} header ${th.textContent} is cut off`);
      if (th.scrollWidth > th.clientWidth + 1) out.push(`${tableSel} header ${th.textContent} is truncated`);
    }
    for (const tr of document.querySelectorAll(`${tableSel} tbody tr`)) {
      const last = tr.lastElementChild;
      if (last.getBoundingClientRect().right > right) out.push(`${tableSel} last column of a row is cut off`);
      for (const inner of last.querySelectorAll('.badge')) {
        if (inner.getBoundingClientRect().right > last.getBoundingClientRect().right + 0.5)
          out.push(`${tableSel} badge overflows its cell`);
      }
    }
    for (const pct of document.querySelectorAll(`${tableSel} .pct`)) {
      const td = pct.closest('td');
      if (pct.getBoundingClientRect().right > td.getBoundingClientRect().right + 0.5)
        out.push(`${tableSel} percentile bar overflows its cell`);
    }
  };
  check('#queue', '#left');
  check('#metrics', '#info');
  return out;
}"""


def test_queue_and_metric_columns_fit(page, warehouse: Path):
    """Every queue column (Decision last) and every metric column (percentiles) is visible at the
    usual desktop widths, with long metric names and values in the table."""
    Manifest(warehouse).execute(
        "UPDATE qc SET metrics_json = ?, updated_at = now() WHERE volume_id = ?",  # now(): the cache sees it
        [json.dumps(LONG_METRICS), OUTLIER.volume_id],
    )
    time.sleep(0.6)  # past ReviewIndex.max_age_s (0.5 s), so the reload sees the new metrics
    page.reload()
    page.wait_for_selector(f'#queue tbody tr[data-id="{OUTLIER.volume_id}"].selected')
    page.wait_for_function(f"() => document.querySelectorAll('#metrics tbody tr').length === {5 + len(LONG_METRICS)}")
    for width in (1280, 1440, 1600, 1920):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_function(f"() => window.innerWidth === {width}")
        assert page.evaluate(LAYOUT_PROBLEMS) == [], f"at {width} px"


def _counts(page) -> dict[str, int]:
    return json.loads(page.get_attribute("#summary", "data-counts") or "{}")


def test_header_counts_follow_ratings_without_a_reload(page):
    page.wait_for_selector(f'#queue tbody tr[data-id="{OUTLIER.volume_id}"].selected')
    page.wait_for_function(f"() => document.querySelector('#vol-title').textContent === '{OUTLIER.volume_id}'")
    before = _counts(page)
    assert before["fail"] == sum(v.decision == "fail" for v in VOLUMES) and before["rated"] == 0
    page.keyboard.press("p")  # the failed outlier is rated pass
    page.wait_for_function("() => JSON.parse(document.querySelector('#summary').dataset.counts).rated === 1")
    after = _counts(page)
    assert after.get("fail", 0) == before["fail"] - 1 and after["pass"] == before["pass"] + 1
    assert "rated: 1 of" in page.inner_text("#summary")


def test_each_volume_has_a_url(page, server_url: str):
    page.wait_for_selector(f'#queue tbody tr[data-id="{OUTLIER.volume_id}"].selected')
    page.wait_for_function(f"() => location.hash === '#/volume/{OUTLIER.volume_id}'")
    assert page.get_attribute("#vol-link", "href") == f"#/volume/{OUTLIER.volume_id}"
    # a fresh load of a volume's URL opens that volume, not the top of the queue
    page.goto(f"{server_url}/#/volume/{PASSING.volume_id}")
    page.reload()
    page.wait_for_function(f"() => document.querySelector('#vol-title').textContent === '{PASSING.volume_id}'")
    assert page.locator(f'#queue tbody tr[data-id="{PASSING.volume_id}"].selected').count() == 1
    # a link pasted into the open page is followed as well
    other = VOLUMES[-1].volume_id
    page.evaluate(f"() => {{ location.hash = '#/volume/{other}'; }}")
    page.wait_for_function(f"() => document.querySelector('#vol-title').textContent === '{other}'")
