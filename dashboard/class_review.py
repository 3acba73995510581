"""Dashboard routes for series held for sequence-class review: queue, facts, mosaic, one-key labels.

The classifier holds a series (state "review") when it is unsure or when header physics and the
description disagree; nothing is converted or trained on until a person names the class. These
routes show what the reviewer needs to decide (PHI-free header facts, the classifier's explanation,
a native mosaic when the series has been converted) and store the label through
`warehouse.class_review_queries.record_class_review`, the same write `mrifoundry review set` uses.

Mosaic: held series are normally not converted yet (conversion follows a confident class), so the
image exists only for series that were curated before being flagged or relabelled, or whose
conversion ran (`derivatives/<subject>/<series>/native.nii.gz`); otherwise the view says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from dashboard import images
from imaging.classify import LABELS
from warehouse import class_review_queries as crq
from warehouse.manifest import Manifest

SERIES_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
FIELDS: tuple[str, ...] = (
    "series_key",
    "subject_id",
    "study_id",
    "series_number",
    "state",
    "modality",
    "manufacturer",
    "model_name",
    "field_strength",
    "n_instances",
    "study_date",
    "auto_label",
    "contrast_enhanced",
    "confidence",
    "explanation",
    "needs_review",
    "review_label",
    "reviewer",
    "review_note",
    "reviewed_at",
)
"""What leaves the server about a held series: pseudonyms, scanner, physics verdict; never free text
from the DICOM header (the series description can hold names)."""


class ClassLabelIn(BaseModel):
    """Body of PUT /api/class-reviews/{series_key}."""

    label: Literal[LABELS]  # type: ignore[valid-type]
    reviewer: str | None = Field(default=None, max_length=crq.MAX_REVIEWER_CHARS)
    note: str | None = Field(default=None, max_length=crq.MAX_NOTE_CHARS)


def _check_key(series_key: str) -> str:
    if not SERIES_KEY_RE.match(series_key):
        raise HTTPException(422, f"series key {series_key!r} is malformed; keys look like ser-0123456789abcdef")
    return series_key


def native_image(root: Path, item: dict[str, Any]) -> str | None:
    """Warehouse-relative path of the series' converted image, or None when it was never converted."""
    if item.get("native_path"):
        return str(item["native_path"])
    subject, key = item.get("subject_id"), item.get("series_key")
    if subject and key and SERIES_KEY_RE.match(str(subject)) and SERIES_KEY_RE.match(str(key)):
        rel = f"derivatives/{subject}/{key}/native.nii.gz"
        if (root / rel).is_file():
            return rel
    return None


def router(manifest: Manifest, root: Path, default_rater: str, clean: Any) -> APIRouter:
    """The class-review routes for one warehouse; `clean` makes values JSON-safe (app._clean)."""
    r = APIRouter()

    def out(item: dict[str, Any]) -> dict[str, Any]:
        body = {k: item.get(k) for k in FIELDS}
        has_image = native_image(root, item) is not None
        body["image"] = f"/api/class-reviews/{item['series_key']}/native.png" if has_image else None
        return body

    @r.get("/api/class-reviews")
    def list_held(limit: Annotated[int, Query(ge=1, le=500)] = 200) -> JSONResponse:
        rows = [{k: row.get(k) for k in FIELDS} for row in crq.held_series(manifest, limit)]
        return JSONResponse(clean({"rows": rows, "total": crq.count_held_series(manifest), "labels": list(LABELS)}))

    @r.get("/api/class-reviews/{series_key}")
    def get_item(series_key: str) -> JSONResponse:
        item = crq.class_review_item(manifest, _check_key(series_key))
        if item is None:
            raise HTTPException(404, f"series {series_key!r} has no classification in this manifest")
        return JSONResponse(clean(out(item)))

    @r.get("/api/class-reviews/{series_key}/native.png")
    def get_image(series_key: str) -> FileResponse:
        item = crq.class_review_item(manifest, _check_key(series_key))
        rel = native_image(root, item) if item else None
        if rel is None:
            raise HTTPException(404, f"series {series_key!r} has not been converted, so there is no image yet")
        try:
            png = images.cached_png(root, series_key, "native", images.VolumeFiles(rel, None, None, None))
        except images.UnsafePath as err:
            raise HTTPException(403, str(err)) from None
        except images.ImageNotAvailable as err:
            raise HTTPException(404, str(err)) from None
        return FileResponse(png, media_type="image/png", headers={"Cache-Control": "private, no-cache"})

    @r.put("/api/class-reviews/{series_key}")
    def put_label(series_key: str, body: Annotated[ClassLabelIn, Body()]) -> JSONResponse:
        try:
            row = crq.record_class_review(
                manifest, _check_key(series_key), body.label, (body.reviewer or "").strip() or default_rater, body.note
            )
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return JSONResponse(clean({**row, "remaining": crq.count_held_series(manifest)}))

    return r
