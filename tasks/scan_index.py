"""The warehouse's header index as the `HeaderIndex` a scan asks: keyed paths in, sealed results out.

Why sealed: a header result holds the raw PatientID, UIDs and dates (they are pseudonymised later, in
`tasks.record`), and the manifest must hold none. Each result is pickled and encrypted with AES-GCM
under a key derived from the warehouse's pseudonymisation key, bound to its path key (so a row cannot
be moved to another file), and the path itself is stored only as a keyed HMAC. Without the key the
table reveals file sizes and times only; with another key every entry is a miss and is read again.

A no-op nightly rescan then costs a directory walk, one `stat` per file and one join in DuckDB
(`bench/ingest.py` measures it against the first scan).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

from imaging.deid import Pseudonymizer
from imaging.dicom import ScanResult, scan_source
from imaging.dicom.scan import FileResult, FileStat
from tasks.context import WarehouseContext
from warehouse.header_index import IndexRow, ensure_table, fetch_rows, forget_missing, store_rows
from warehouse.manifest import Manifest

_NONCE_BYTES = 12


class WarehouseHeaderIndex:
    """`imaging.dicom.scan.HeaderIndex` backed by the ``header_index`` table of one warehouse."""

    def __init__(self, manifest: Manifest, source: Path, p: Pseudonymizer) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._m = manifest
        self._path_secret = p.derive_key("header-index-path")
        self._aead = AESGCM(p.derive_key("header-index-seal"))
        self._keys: dict[Path, str] = {}
        self.source_key = self.path_key(Path(source).resolve())
        self.n_forgotten = 0
        ensure_table(manifest)

    def __repr__(self) -> str:  # the secrets stay out of logs and tracebacks
        return "WarehouseHeaderIndex(<keyed>)"

    def path_key(self, path: Path) -> str:
        key = self._keys.get(path)
        if key is None:
            key = self._keys[path] = hmac.new(self._path_secret, os.fsencode(str(path)), hashlib.sha256).hexdigest()
        return key

    def _seal(self, path_key: str, result: FileResult) -> bytes:
        # The path is the row's key (and bound to it below), so the sealed result goes without it: smaller,
        # and a lookup of 100k files builds no Path objects while unpickling.
        payload = pickle.dumps(dataclasses.replace(result, path=None), protocol=5)
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, payload, path_key.encode())

    def _open(self, path_key: str, sealed: bytes, path: Path) -> FileResult | None:
        from cryptography.exceptions import InvalidTag

        try:
            raw = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], path_key.encode())
        except InvalidTag:  # another key (the key was rotated) or a damaged row: read the file again
            return None
        result = pickle.loads(raw)  # authenticated above: only this warehouse's key could have written it
        object.__setattr__(result, "path", path)  # frozen dataclass: put back the path the row is keyed by
        return result

    def lookup(self, files: Sequence[FileStat], version: str) -> dict[Path, FileResult]:
        by_key = {self.path_key(f.path): f for f in files}
        out: dict[Path, FileResult] = {}
        for row in fetch_rows(self._m, list(by_key)):
            f = by_key[row.path_key]
            if (row.size, row.mtime_ns, row.reader_version) != (f.size, f.mtime_ns, version):
                continue
            result = self._open(row.path_key, row.sealed, f.path)
            if result is not None:
                out[f.path] = result
        return out

    def update(self, fresh: Sequence[tuple[FileStat, FileResult]], present: Sequence[FileStat], version: str) -> None:
        rows = []
        for f, result in fresh:
            key = self.path_key(f.path)
            rows.append(IndexRow(key, self.source_key, f.size, f.mtime_ns, version, self._seal(key, result)))
        store_rows(self._m, rows)
        self.n_forgotten = forget_missing(self._m, self.source_key, [self.path_key(f.path) for f in present])


def scan_with_index(ctx: WarehouseContext, source: Path, *, workers: int | None = None) -> ScanResult:
    """Scan `source`, reopening only the files this warehouse has not seen with their current size and mtime."""
    p = Pseudonymizer.from_env_or_file(ctx.key_file)
    root = Path(source).resolve()  # one spelling of every path, so the keys match from run to run
    return scan_source(root, workers=workers, index=WarehouseHeaderIndex(ctx.manifest, root, p))
