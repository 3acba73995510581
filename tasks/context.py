"""The warehouse a run writes to: layout, manifest, pseudonymisation key, versions.

A warehouse directory is self-contained: `manifest.duckdb`, `shards/`, `checkpoints/`, `reports/`,
`derivatives/` (per-series NIfTI intermediates) and `deid.key` (the HMAC secret, mode 0600, unless
MRIFOUNDRY_DEID_KEY is set).
"""

from __future__ import annotations

import functools
import subprocess
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tasks.lifecycle import sweep_interrupted
from warehouse.identity import ensure_warehouse_id
from warehouse.manifest import Manifest

# Bump when a stage's output changes meaning: series curated by an older version are redone.
# curate-2: QC reads the N4 field registration fitted (stronger correction: cjv and similarity move).
# curate-3: N4 10/10/60 iterations (INU moves up to 3 %), deepbet on the model grid without its box finder
#          (a T2w mask can move by a voxel row).
PIPELINE_VERSION = "curate-3"
KEY_FILE = "deid.key"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout (recorded in checkpoints)."""
    try:
        pkg = version("mrifoundry")
    except PackageNotFoundError:
        pkg = "0+unknown"
    try:
        sha = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return f"{pkg}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return pkg


@dataclass(frozen=True)
class WarehouseContext:
    """What every task needs to find the warehouse; plain data so Prefect can pass it around."""

    root: Path
    run_id: str

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.root)

    @property
    def key_file(self) -> Path:
        return self.root / KEY_FILE

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def derivatives(self, subject_id: str, series_key: str) -> Path:
        return self.root / "derivatives" / subject_id / series_key

    def rel(self, path: Path) -> str:
        """Warehouse-relative path, so a warehouse can be moved or mounted elsewhere."""
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def abs(self, rel: str) -> Path:
        return self.root / rel


def open_warehouse(root: Path | str, run_id: str | None = None) -> WarehouseContext:
    """Create the warehouse layout and manifest tables if needed (idempotent)."""
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--warehouse {root} is a file; pass a directory (it is created if missing)")
    for sub in ("shards", "checkpoints", "reports", "derivatives"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    manifest = Manifest(root).init()
    ensure_warehouse_id(manifest)  # made once; events and triggers name the warehouse by it
    sweep_interrupted(manifest)
    return WarehouseContext(root=root, run_id=run_id or f"run-{uuid.uuid4().hex[:12]}")


def open_existing_warehouse(root: Path | str) -> WarehouseContext:
    """Open a warehouse that must already exist (status, dashboard): nothing is created.

    Old warehouses get new columns (additive migration) and dead runs are marked interrupted, so
    a reader sees the same truth as the next flow would.
    """
    root = Path(root).expanduser().resolve()
    manifest = Manifest(root)
    if not manifest.path.is_file():
        raise FileNotFoundError(
            f"no warehouse at {root} (no {manifest.path.name}); run `mrifoundry curate SOURCE --warehouse {root}` first"
        )
    sweep_interrupted(manifest.init())
    return WarehouseContext(root=root, run_id="read-only")
