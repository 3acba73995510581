"""The header index: an unchanged file is not reopened; a touched, changed or new one is; a deleted one
is forgotten; and the index stores no path or identifier in clear."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import imaging.dicom.scan as scan_mod
from imaging.deid import Pseudonymizer
from imaging.dicom import scan_source
from tasks.context import open_warehouse
from tasks.scan_index import WarehouseHeaderIndex, scan_with_index
from warehouse.header_index import count_rows
from warehouse.manifest import Manifest

KEY = "ef" * 32


@pytest.fixture(scope="module")
def template_export(shared_data: Path) -> list[Path]:
    """80 real Philips files (.dcm.gz): part of the MPRAGE and of the other series, all in one folder."""
    files = sorted((shared_data / "dicom" / "philips_flat_folder").iterdir())
    return files[:40] + files[-40:]


@pytest.fixture
def setup(template_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh copy of the export under a PHI-named folder, a warehouse, and a counter of file reads."""
    source = tmp_path / "MUELLER_HANS_19450101"
    for i, f in enumerate(template_export):
        folder = source / f"PID12345678_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, folder / f.name)
    monkeypatch.setenv("MRIFOUNDRY_DEID_KEY", KEY)
    ctx = open_warehouse(tmp_path / "wh")
    reads: list[Path] = []
    real = scan_mod.read_file

    def counting(path: Path):
        reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(scan_mod, "read_file", counting)

    def scan():
        reads.clear()
        return scan_with_index(ctx, source, workers=1)

    return source, ctx, reads, scan, template_export


def _same(a, b) -> bool:
    key = [(s.series_uid, s.sop_hash, s.rejection, s.files) for s in a.series]
    return key == [(s.series_uid, s.sop_hash, s.rejection, s.files) for s in b.series] and [
        (r.path, r.reason) for r in a.rejected_files
    ] == [(r.path, r.reason) for r in b.rejected_files]


def test_unchanged_files_are_not_reopened_and_the_result_is_the_same(setup) -> None:
    source, ctx, reads, scan, _ = setup
    first = scan()
    assert first.n_read == first.n_files == len(reads) == 80
    second = scan()
    assert reads == [] and second.n_read == 0 and second.n_files == first.n_files
    assert _same(first, second)
    assert _same(second, scan_source(source.resolve(), workers=1))  # as if there were no index


def test_touched_changed_new_and_deleted_files(setup) -> None:
    source, ctx, reads, scan, _ = setup
    first = scan()
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.stat().st_size > 2000)
    touched, changed, deleted = files[3], files[10], files[20]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed.write_bytes(changed.read_bytes() + b"\0\0")  # same header, longer file: must be read again
    deleted.unlink()
    new = source / "late" / "IM9000.dcm"
    new.parent.mkdir()
    shutil.copyfile(files[30], new)  # "late" sorts after the original: it is the duplicate
    source_key = WarehouseHeaderIndex(ctx.manifest, source.resolve(), Pseudonymizer(bytes.fromhex(KEY))).source_key
    assert count_rows(ctx.manifest, source_key) == first.n_files
    second = scan()
    assert sorted(reads) == sorted(p.resolve() for p in (touched, changed, new))
    assert second.n_files == first.n_files  # one gone, one new
    assert count_rows(ctx.manifest, source_key) == second.n_files  # the deleted file is forgotten
    assert deleted.resolve() not in {f for s in second.series for f in s.files}
    assert new.resolve() in {r.path for r in second.rejected_files}  # the same SOP instance as files[30]
    assert _same(second, scan_source(source.resolve(), workers=1))
    assert scan().n_read == 0


def test_the_index_holds_no_path_or_identifier_in_clear(setup) -> None:
    source, ctx, reads, scan, _ = setup
    result = scan()
    identifiers = {v for s in result.series for v in (s.patient_id, s.study_uid, s.series_uid) if len(v) >= 6}
    assert identifiers
    with Manifest(ctx.root).connect(read_only=True) as con:
        rows = con.execute("SELECT * FROM header_index").fetchall()
    text = json.dumps(rows, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))
    raw = b"".join(r[5] for r in rows)
    for value in ("MUELLER", "PID12345678", "1301_0001", str(source), *identifiers):
        assert value not in text and value.encode() not in raw, value


def test_another_key_reads_everything_again(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    source, ctx, reads, scan, _ = setup
    first = scan()
    monkeypatch.setenv("MRIFOUNDRY_DEID_KEY", "12" * 32)
    assert scan().n_read == first.n_files
