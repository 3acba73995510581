"""Refusals: missing/wrong token, exposed binds, foreign Host/Origin, path traversal, SQL injection."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dashboard.app import SESSION_COOKIE, create_app
from dashboard.server import build_server, check_bind, is_loopback
from flows.commands import dashboard as cli_dashboard
from tests.dashboard.conftest import PASSING, VOLUMES
from warehouse.manifest import Manifest

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture
def client(warehouse: Path) -> TestClient:
    return TestClient(create_app(warehouse), base_url="http://127.0.0.1")


@pytest.fixture
def guarded(warehouse: Path) -> TestClient:
    return TestClient(create_app(warehouse, TOKEN), base_url="http://127.0.0.1", follow_redirects=False)


# ---- token --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/api/queue", "/api/facets", f"/api/volumes/{PASSING.volume_id}", "/api/ratings.csv", "/api/ratings.json"]
    + [f"/api/volumes/{PASSING.volume_id}/image/native.png", "/static/app.js"],
)
def test_every_route_needs_the_token(guarded: TestClient, path: str):
    r = guarded.get(path)
    assert r.status_code in (401, 303) and PASSING.volume_id not in r.text
    assert guarded.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code in (401, 303)
    assert guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_writes_need_the_token_and_leave_the_manifest_alone(guarded: TestClient, warehouse: Path):
    r = guarded.put(f"/api/volumes/{PASSING.volume_id}/rating", json={"rating": "fail"})
    assert r.status_code == 401
    assert guarded.delete(f"/api/volumes/{PASSING.volume_id}/rating").status_code == 401
    assert Manifest(warehouse).count("ratings") == 0


def test_login_sets_a_session_cookie_that_is_not_the_token(guarded: TestClient):
    page = guarded.get("/")
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert "token" in guarded.get("/login").text
    assert guarded.post("/login", data={"token": "nope"}).status_code == 401
    ok = guarded.post("/login", data={"token": TOKEN})
    assert ok.status_code == 303
    cookie = ok.cookies.get(SESSION_COOKIE)
    assert cookie and TOKEN not in cookie
    set_cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    guarded.cookies.set(SESSION_COOKIE, cookie)
    assert guarded.get("/").status_code == 200
    assert guarded.get("/api/queue").json()["total"] == len(VOLUMES)
    guarded.cookies.set(SESSION_COOKIE, "0" * len(cookie))
    assert guarded.get("/api/queue").status_code == 401


def test_non_loopback_bind_needs_a_long_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("dashboard.example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ValueError, match="--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    with pytest.raises(ValueError, match="not a host"):
        check_bind("127.0.0.1 evil", None)


def test_cli_refuses_an_exposed_bind_without_token(warehouse: Path, capsys, monkeypatch):
    monkeypatch.delenv("MRIFOUNDRY_DASHBOARD_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    cli_dashboard.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dashboard", "--warehouse", str(warehouse), "--host", "0.0.0.0"])
    assert cli_dashboard.run(args) == 2
    assert "--token" in capsys.readouterr().err
    missing = parser.parse_args(["dashboard", "--warehouse", str(warehouse / "nope")])
    assert cli_dashboard.run(missing) == 2
    assert "no manifest" in capsys.readouterr().err


def test_token_from_environment_guards_an_exposed_server(warehouse: Path, monkeypatch):
    from dashboard.server import resolve_token

    monkeypatch.setenv("MRIFOUNDRY_DASHBOARD_TOKEN", TOKEN)
    assert resolve_token(None) == TOKEN
    server = build_server(warehouse, "0.0.0.0", 0, resolve_token(None))  # built, never started
    c = TestClient(server.config.app, base_url="http://0.0.0.0")
    assert c.get("/api/queue").status_code == 401
    assert c.get("/api/queue", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


# ---- host / origin ------------------------------------------------------------------------------
def test_foreign_host_header_is_refused_without_token(warehouse: Path):
    """DNS rebinding: evil.example resolves to 127.0.0.1, but the Host header still says evil.example."""
    c = TestClient(create_app(warehouse), base_url="http://evil.example")
    r = c.get("/api/queue")
    assert r.status_code == 421 and PASSING.volume_id not in r.text
    assert TestClient(create_app(warehouse), base_url="http://localhost:8765").get("/api/queue").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.2", "127.255.255.254:8765", "[::1]:8765", "127.0.0.1", "localhost"])
def test_every_loopback_address_is_answered_without_token(warehouse: Path, host: str):
    c = TestClient(create_app(warehouse), base_url=f"http://{host}")
    assert c.get("/api/queue").json()["total"] == len(VOLUMES)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "128.0.0.1", "127.0.0.1.evil.example", "localhost.evil.example"])
def test_non_loopback_host_headers_stay_refused(warehouse: Path, host: str):
    assert TestClient(create_app(warehouse), base_url=f"http://{host}").get("/api/queue").status_code == 421


def test_server_bound_to_127_0_0_2_answers(warehouse: Path):
    """`--host 127.0.0.2` used to start and then answer every request with 421."""
    import threading
    import time
    import urllib.request

    server = build_server(warehouse, "127.0.0.2", 0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "dashboard server did not start"
        time.sleep(0.05)
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/api/facets", timeout=10) as resp:
            assert resp.status == 200 and b'"decisions"' in resp.read()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cross_site_write_is_refused(client: TestClient, warehouse: Path):
    r = client.put(
        f"/api/volumes/{PASSING.volume_id}/rating",
        json={"rating": "fail"},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    assert Manifest(warehouse).count("ratings") == 0
    same = client.put(
        f"/api/volumes/{PASSING.volume_id}/rating", json={"rating": "fail"}, headers={"Origin": "http://127.0.0.1"}
    )
    assert same.status_code == 200


# ---- path traversal -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2Fapp.py",
        "/static/%2e%2e%2f%2e%2e%2fmanifest.duckdb",
        "/static/index.html%00.js",
        f"/api/volumes/{PASSING.volume_id}/image/..%2F..%2Fmanifest.png",
        f"/api/volumes/{PASSING.volume_id}/image/native.nii.gz",
        "/api/volumes/..%2F..%2Fdeid.key/image/native.png",
        "/api/volumes/%2e%2e/image/native.png",
    ],
)
def test_traversal_urls_are_refused(client: TestClient, warehouse: Path, path: str):
    (warehouse / "deid.key").write_text("HMAC-SECRET-DO-NOT-SERVE")
    r = client.get(path)
    assert r.status_code in (404, 422)
    assert "HMAC-SECRET" not in r.text and "import " not in r.text and not r.content.startswith(b"DUCK")


@pytest.mark.parametrize("bad", ["../../../../etc/passwd", "/etc/passwd", "derivatives/../deid.key"])
def test_tampered_manifest_paths_are_refused(client: TestClient, warehouse: Path, bad: str):
    (warehouse / "deid.key").write_text("HMAC-SECRET-DO-NOT-SERVE")
    Manifest(warehouse).execute("UPDATE volumes SET native_path = ? WHERE volume_id = ?", [bad, PASSING.volume_id])
    r = client.get(f"/api/volumes/{PASSING.volume_id}/image/native.png")
    assert r.status_code == 403
    assert "root:" not in r.text and "HMAC-SECRET" not in r.text


def test_symlink_out_of_the_warehouse_is_refused(client: TestClient, warehouse: Path, tmp_path: Path):
    outside = tmp_path / "outside.nii.gz"
    native = warehouse / Manifest(warehouse).scalar(
        "SELECT native_path FROM volumes WHERE volume_id = ?", [PASSING.volume_id]
    )
    outside.write_bytes(native.read_bytes())
    native.unlink()
    os.symlink(outside, native)
    assert client.get(f"/api/volumes/{PASSING.volume_id}/image/native.png").status_code == 403


# ---- injection ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"decision": "pass' OR 1=1 --"},
        {"rated": "true OR 1=1"},
        {"sort": "score; DROP TABLE ratings"},
        {"snr_min": "0 OR 1=1"},
        {"fov_coverage_max": "nan"},
        {"date_from": "2020-01-01' OR '1'='1"},
        {"limit": "10; DELETE FROM qc"},
        {"cursor": "1 OR 1=1"},
    ],
)
def test_malformed_filters_are_rejected(client: TestClient, params: dict):
    r = client.get("/api/queue", params=params)
    assert r.status_code == 422, r.text
    assert "rows" not in r.json()


@pytest.mark.parametrize(
    "params",
    [
        {"scanner": "x' OR 1=1 --"},
        {"label": "T1w'; DROP TABLE ratings; --"},
        {"site": "' OR ''='"},
        {"q": "%"},
        {"q": "vol-' OR 1=1 --"},
    ],
)
def test_injection_in_free_text_filters_matches_nothing(client: TestClient, warehouse: Path, params: dict):
    r = client.get("/api/queue", params=params)
    assert r.status_code == 200
    assert r.json()["rows"] == [] and r.json()["total"] == 0
    h = client.get("/api/histograms", params=params)
    assert h.status_code == 200 and all(v["n"] == 0 for v in h.json().values())
    m = Manifest(warehouse)
    assert m.count("volumes") == len(VOLUMES) and m.count("ratings") == 0  # tables intact


def test_sql_in_a_note_is_stored_verbatim(client: TestClient, warehouse: Path):
    note = "'); DELETE FROM qc; --"
    r = client.put(f"/api/volumes/{PASSING.volume_id}/rating", json={"rating": "fail", "note": note})
    assert r.status_code == 200
    m = Manifest(warehouse)
    assert m.scalar("SELECT note FROM ratings WHERE volume_id = ?", [PASSING.volume_id]) == note
    assert m.count("qc") == len(VOLUMES)
