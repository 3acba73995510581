"""The QC dashboard web app: review queue, per-volume views, one-key ratings, rating export.

`create_app(warehouse, token)` builds a FastAPI app that reads and writes the manifest only through
`warehouse.review_queries`. Security model (the server binds 127.0.0.1 unless given a token):

- With a token, every route except the login form needs it: `Authorization: Bearer <token>` or the
  session cookie set by `POST /login` (HttpOnly, SameSite=Strict, holding an HMAC of the token,
  never the token itself). Without a token, only loopback Host headers are answered, which stops
  DNS-rebinding pages from reaching a localhost dashboard.
- Writes use PUT/DELETE with a JSON body and are refused when an Origin header names another site,
  so a web page cannot rate volumes through the reviewer's browser.
- Responses carry pseudonyms only (allow-listed fields); images come from the warehouse directory
  only (`dashboard.images.safe_path`); every filter reaches DuckDB as a bound parameter.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import hmac
import io
import ipaddress
import json
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import duckdb
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from dashboard import class_review, images
from warehouse import ratings
from warehouse import review_queries as rq
from warehouse.manifest import Manifest

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
"""The only files /static serves: an allow-list, so no request path ever reaches the file system."""

SESSION_COOKIE = "mrifoundry_session"
LOOPBACK_HOSTS = frozenset({"localhost"})
"""Loopback names answered without a token; loopback addresses (127.0.0.0/8, ::1) are recognised by value."""
VOLUME_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# Fields of a volume that may leave the server: pseudonyms, scanner model, metrics, decisions.
DETAIL_FIELDS: tuple[str, ...] = (
    "volume_id",
    "subject_id",
    "study_id",
    "series_key",
    "label",
    "manufacturer",
    "model_name",
    "field_strength",
    "study_date",
    "site",
    "auto_decision",
    "rating",
    "decision",
    "reasons",
    "rater",
    "tags",
    "note",
    "rated_at",
    "qc_updated_at",
    "score",
    "group_n",
    "ref_level",
    "ref_n",
    *rq.METRICS,
    *(f"z_{m}" for m in rq.METRICS),
    "metrics_extra",
    "percentiles",
    "class_label",
    "contrast_enhanced",
    "confidence",
    "explanation",
    "needs_review",
    "native_shape",
    "native_spacing",
    "converter",
    "skullstrip_backend",
)
QUEUE_FIELDS: tuple[str, ...] = (
    "volume_id",
    "subject_id",
    "label",
    "manufacturer",
    "model_name",
    "study_date",
    "site",
    "auto_decision",
    "rating",
    "decision",
    *rq.METRICS,
    "score",
    "top_metric",
    "group_n",
    "ref_level",
)

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MRI Foundry QC: sign in</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css"></head>
<body class="login"><form method="post" action="/login">
<h1>MRI Foundry QC</h1><p>{message}</p>
<label>Access token <input type="password" name="token" autofocus autocomplete="current-password"></label>
<button type="submit">Sign in</button></form></body></html>
"""


class RatingIn(BaseModel):
    """Body of PUT /api/volumes/{id}/rating."""

    rating: Literal["pass", "fail", "review"]
    tags: list[str] = Field(default_factory=list, max_length=len(ratings.ARTIFACT_TAGS))
    note: str | None = Field(default=None, max_length=ratings.MAX_NOTE)
    rater: str | None = Field(default=None, max_length=ratings.MAX_RATER)


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null (JSON has no NaN), dates become ISO strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), b"mrifoundry-dashboard-session", hashlib.sha256).hexdigest()


def _check_volume_id(volume_id: str) -> str:
    if not VOLUME_ID_RE.match(volume_id):
        raise HTTPException(422, f"volume id {volume_id!r} is malformed; ids look like vol-0123456789abcdef")
    return volume_id


def _filters(
    request: Request,
    decision: Literal["pass", "fail", "review"] | None = None,
    rated: bool | None = None,
    label: Annotated[str | None, Query(max_length=64)] = None,
    scanner: Annotated[str | None, Query(max_length=128)] = None,
    site: Annotated[str | None, Query(max_length=128)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
) -> rq.Filters:
    """Queue filters from the query string; metric ranges come as `<metric>_min` / `<metric>_max`."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for metric in rq.METRICS:
        bounds: list[float | None] = []
        for side in ("min", "max"):
            raw = request.query_params.get(f"{metric}_{side}")
            if raw in (None, ""):
                bounds.append(None)
                continue
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise HTTPException(422, f"{metric}_{side}={raw!r} is not a finite number")
            bounds.append(value)
        if bounds != [None, None]:
            ranges[metric] = (bounds[0], bounds[1])
    try:
        return rq.Filters(
            decision=decision,
            rated=rated,
            label=label or None,
            scanner=scanner or None,
            site=site or None,
            date_from=date_from,
            date_to=date_to,
            ranges=ranges,
            search=q or None,
        )
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


def create_app(
    warehouse: Path | str,
    token: str | None = None,
    *,
    rater: str | None = None,
    trusted_hosts: Sequence[str] = (),
    max_age_s: float = 0.5,
) -> FastAPI:
    """Build the dashboard app for one warehouse.

    Args:
        warehouse: directory holding manifest.duckdb and derivatives/.
        token: access token; when set, every route but /login requires it.
        rater: default rater name stored with ratings when the browser sends none (default: OS user).
        trusted_hosts: extra Host names answered without a token (besides loopback names).
        max_age_s: how stale the queue may be to changes made by other processes (see ReviewIndex).

    Raises:
        FileNotFoundError: the warehouse has no manifest yet.
    """
    root = Path(warehouse).expanduser().resolve()
    manifest = Manifest(root)
    if not manifest.path.is_file():
        raise FileNotFoundError(
            f"no manifest at {manifest.path}; run `mrifoundry curate SOURCE --warehouse {root}` first"
        )
    default_rater = rater or _os_user()
    allowed_hosts = LOOPBACK_HOSTS | {h.lower() for h in trusted_hosts}
    session = _session_value(token) if token else None
    app = FastAPI(title="MRI Foundry QC", docs_url=None, redoc_url=None, openapi_url=None)
    index = rq.ReviewIndex(manifest, max_age_s=max_age_s)
    app.state.warehouse = root
    app.state.index = index

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), token.encode()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bool(session) and hmac.compare_digest(cookie.encode(), session.encode())  # type: ignore[union-attr]

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await _guard(request, call_next)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = (request.headers.get("host") or "").lower()
        hostname = urlsplit(f"//{host}").hostname or ""
        if token is None and not (_is_loopback_ip(hostname) or hostname in allowed_hosts):
            return JSONResponse(
                {"detail": f"Host {host!r} is not served: this dashboard answers loopback names only without a token"},
                status_code=421,
            )
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin and urlsplit(origin).netloc.lower() != host:
            return JSONResponse({"detail": f"cross-site request from {origin!r} refused"}, status_code=403)
        path = request.url.path
        if path in ("/login", "/static/app.css") or authorised(request):
            return await call_next(request)
        if path.startswith("/api/"):
            return JSONResponse(
                {"detail": "missing or wrong token: send 'Authorization: Bearer <token>' or sign in at /login"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(duckdb.IOException)
    async def manifest_busy(request: Request, err: duckdb.IOException) -> JSONResponse:
        # Another process (a curate run) holds DuckDB's file lock for a moment: ask the browser to retry.
        if "lock" not in str(err).lower():
            raise err
        return JSONResponse(
            {"detail": "the manifest is locked by another process (a pipeline run writing); retry in a moment"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.get("/login", response_class=HTMLResponse)
    def login_form() -> Response:
        if token is None:
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(LOGIN_PAGE.format(message="This dashboard needs the token it was started with."))

    @app.post("/login")
    async def login(request: Request) -> Response:
        if token is None:
            return RedirectResponse("/", status_code=303)
        length = request.headers.get("content-length") or "0"
        if not length.isdigit() or int(length) > 4096:  # a token form is tiny; do not buffer large bodies
            return HTMLResponse(LOGIN_PAGE.format(message="Send the token from this form."), status_code=413)
        body = (await request.body()).decode("utf-8", "replace")
        given = (parse_qs(body).get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HTMLResponse(LOGIN_PAGE.format(message="Wrong token, try again."), status_code=401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, session or "", httponly=True, samesite="strict", path="/")
        return resp

    @app.get("/", response_class=HTMLResponse)
    def home() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/volume/{volume_id}")
    def volume_link(volume_id: str) -> RedirectResponse:
        """A shareable path per volume; the page itself routes on #/volume/<id>."""
        return RedirectResponse(f"/#/volume/{_check_volume_id(volume_id)}", status_code=303)

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    @app.get("/api/facets")
    def get_facets() -> JSONResponse:
        return JSONResponse(_clean({**index.facets(), "default_rater": default_rater}))

    @app.get("/api/queue")
    def get_queue(
        filters: Annotated[rq.Filters, Depends(_filters)],
        sort: Literal["score", "volume"] = "score",
        limit: Annotated[int, Query(ge=1, le=rq.MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> JSONResponse:
        try:
            page = index.queue_page(filters, sort=sort, limit=limit, cursor=cursor, offset=offset)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        rows = [{k: r.get(k) for k in QUEUE_FIELDS} for r in page.rows]
        return JSONResponse(_clean({"rows": rows, "total": page.total, "next_cursor": page.next_cursor}))

    @app.get("/api/histograms")
    def get_histograms(
        filters: Annotated[rq.Filters, Depends(_filters)],
        bins: Annotated[int, Query(ge=1, le=200)] = 24,
    ) -> JSONResponse:
        try:
            return JSONResponse(_clean(index.histograms(filters, bins=bins)))
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @app.get("/api/volumes/{volume_id}")
    def get_volume(volume_id: str) -> JSONResponse:
        d = index.volume_detail(_check_volume_id(volume_id))
        if d is None:
            raise HTTPException(404, f"volume {volume_id!r} is not in the manifest")
        out = {k: d.get(k) for k in DETAIL_FIELDS}
        out["images"] = {kind: f"/api/volumes/{volume_id}/image/{kind}.png" for kind in images.KINDS}
        return JSONResponse(_clean(out))

    @app.get("/api/volumes/{volume_id}/image/{kind}.png")
    def get_image(volume_id: str, kind: str) -> FileResponse:
        _check_volume_id(volume_id)
        if kind not in images.KINDS:
            raise HTTPException(404, f"image kind {kind!r} is not one of {', '.join(images.KINDS)}")
        r = rq.volume_files(manifest, volume_id)
        if r is None:
            raise HTTPException(404, f"volume {volume_id!r} is not in the manifest")
        files = images.VolumeFiles(r["native_path"], r["registered_path"], r["mask_path"], r["fov_path"])
        try:
            png = images.cached_png(root, volume_id, kind, files)
        except images.UnsafePath as err:
            raise HTTPException(403, str(err)) from None
        except images.ImageNotAvailable as err:
            raise HTTPException(404, str(err)) from None
        return FileResponse(png, media_type="image/png", headers={"Cache-Control": "private, no-cache"})

    @app.put("/api/volumes/{volume_id}/rating")
    def put_rating(volume_id: str, body: Annotated[RatingIn, Body()]) -> JSONResponse:
        try:
            row = index.rate(
                _check_volume_id(volume_id),
                body.rating,
                (body.rater or "").strip() or default_rater,
                body.tags,
                body.note,
            )
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return JSONResponse(_clean(row))

    @app.delete("/api/volumes/{volume_id}/rating")
    def delete_rating(volume_id: str) -> JSONResponse:
        existed = index.clear(_check_volume_id(volume_id))
        return JSONResponse({"volume_id": volume_id, "cleared": existed})

    @app.get("/api/ratings.json")
    def ratings_json() -> Response:
        body = json.dumps(_clean(ratings.export_ratings(manifest)), indent=1)
        return Response(body, media_type="application/json", headers=_attachment("ratings.json"))

    @app.get("/api/ratings.csv")
    def ratings_csv() -> Response:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(ratings.EXPORT_COLUMNS)
        for r in _clean(ratings.export_ratings(manifest)):
            w.writerow([_csv_cell(r.get(c)) for c in ratings.EXPORT_COLUMNS])
        return Response(buf.getvalue(), media_type="text/csv; charset=utf-8", headers=_attachment("ratings.csv"))

    app.include_router(class_review.router(manifest, root, default_rater, _clean))
    return app


def _is_loopback_ip(hostname: str) -> bool:
    """True for any address in 127.0.0.0/8 or ::1 (the server may bind 127.0.0.2, and browsers send
    that literal as Host); names other than 'localhost' are not resolved, so DNS rebinding stays out."""
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def _csv_cell(value: Any) -> str:
    """CSV text for a cell; lists join with ';' and a leading = + - @ is quoted so that
    spreadsheets do not evaluate a reviewer's note as a formula."""
    text = ";".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _os_user() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "reviewer"
    return name if re.match(r"^[\w .@+-]{1,64}$", name) else "reviewer"
