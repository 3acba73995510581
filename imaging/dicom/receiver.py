"""A DICOM Storage SCP: PACS pushes MR studies over the network into a drop folder curate can read.

Hospitals do not export folders for research pipelines; their PACS (or a modality) pushes studies
with C-STORE to an AE title. This is that AE title. It accepts C-ECHO (so the PACS administrator can
verify the node) and C-STORE of MR images (classic MR, Enhanced MR and Legacy Converted Enhanced MR,
in any transfer syntax pydicom knows, compressed included: the scan decodes them later).

Why it is built the way it is:
- Only calling AE titles on the allow-list may associate (`--allow-ae`); anything else is refused
  at association, before a byte of patient data is received.
- Each instance is written whole or not at all (temp file + rename, `imaging.dicom.drop`), as the
  raw bytes the sender encoded: nothing is decoded and re-encoded, so nothing can be altered.
- File and folder names are hashes of UIDs; no patient name or ID ever appears in a path or a log.
- A study is marked READY after `quiet_seconds` without a new instance; curate reads only ready
  studies. A late instance for a ready study takes the marker away and restarts the clock.
- On restart, studies without READY pick up their clock from the newest file they hold.

Pure networking and files: no Prefect, no DuckDB (the CLI is `flows/commands/receive.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaging.dicom.drop import (
    init_drop,
    instance_path,
    is_ready,
    mark_ready,
    pending_studies,
    write_atomic,
)

log = logging.getLogger("mrifoundry.receiver")

MR_STORAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
DEFAULT_QUIET_SECONDS = 120.0
_AE_TITLE_MAX = 16

# C-STORE status codes (PS3.4 B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


def check_ae_title(title: str, what: str = "AE title") -> str:
    """The title stripped, or ValueError naming what is wrong (DICOM: 1-16 printable chars, no '\\')."""
    t = (title or "").strip()
    if not t or len(t) > _AE_TITLE_MAX or "\\" in t or not t.isprintable():
        raise ValueError(
            f"{what} {title!r} is not a valid DICOM AE title; use 1-{_AE_TITLE_MAX} printable characters without '\\'"
        )
    return t


@dataclass(frozen=True)
class ReceiverConfig:
    """What the PACS administrator configures: our AE title and port, who may send, where files go.

    `allowed_calling_aes` empty means any caller is accepted (a warning is logged at start).
    """

    ae_title: str
    port: int
    drop: Path
    allowed_calling_aes: tuple[str, ...] = ()
    quiet_seconds: float = DEFAULT_QUIET_SECONDS
    host: str = "0.0.0.0"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "--ae-title"))
        object.__setattr__(
            self, "allowed_calling_aes", tuple(check_ae_title(a, "--allow-ae") for a in self.allowed_calling_aes)
        )
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port {self.port} is out of range; use 1-65535 (104 and 11112 are the DICOM ports)")
        if self.quiet_seconds <= 0:
            raise ValueError(f"quiet seconds {self.quiet_seconds} must be > 0 (default {DEFAULT_QUIET_SECONDS:g})")


@dataclass
class _Study:
    last_arrival: float
    received: int = 0


@dataclass
class DropWriter:
    """Files instances into the drop folder and decides when a study is ready. Thread-safe.

    Separate from the network code so the readiness rules can be driven with a fake clock.
    """

    drop: Path
    quiet_seconds: float
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _studies: dict[Path, _Study] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.drop = Path(self.drop)
        self._tmp = init_drop(self.drop)
        now, wall = self.clock(), time.time()
        for study_dir in pending_studies(self.drop):  # resume after a restart
            newest = max((f.stat().st_mtime for f in study_dir.rglob("*.dcm")), default=wall)
            self._studies[study_dir] = _Study(last_arrival=now - max(0.0, wall - newest))

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one encoded instance (preamble + file meta + dataset) atomically; returns its path."""
        where = instance_path(self.drop, study_uid, series_uid, sop_uid)
        with self._lock:
            state = self._studies.setdefault(where.study_dir, _Study(self.clock()))
            ready = where.study_dir / "READY"
            if ready.exists():  # a late instance: the study is not complete after all
                ready.unlink()
                log.info("%s: new instance after READY; waiting for quiet again", where.study_dir.name)
            state.last_arrival = self.clock()
        write_atomic(where.file, data, self._tmp)
        with self._lock:
            state.last_arrival = self.clock()
            state.received += 1
        return where.file

    def mark_quiet_studies(self) -> list[Path]:
        """Write READY into every study quiet for `quiet_seconds`; returns those study folders."""
        now, done = self.clock(), []
        with self._lock:
            for study_dir, state in list(self._studies.items()):
                if now - state.last_arrival >= self.quiet_seconds and not is_ready(study_dir):
                    counts = mark_ready(study_dir, self._tmp)
                    log.info("%s ready: %d series, %d instances", study_dir.name, counts["series"], counts["instances"])
                    done.append(study_dir)
                if is_ready(study_dir):
                    del self._studies[study_dir]
        return done

    def pending(self) -> int:
        with self._lock:
            return len(self._studies)


class Receiver:
    """The Storage SCP: `start()` listens in background threads, `stop()` shuts it down."""

    def __init__(self, config: ReceiverConfig):
        self.config = config
        self.writer = DropWriter(config.drop, config.quiet_seconds)
        self._server: Any = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- DIMSE handlers (run on pynetdicom's association threads) --------------------------------

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        try:
            ds = event.dataset
            uids = [str(getattr(ds, k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID")]
            sop_uid = str(event.request.AffectedSOPInstanceUID or getattr(ds, "SOPInstanceUID", "") or "").strip()
        except Exception as err:  # a dataset pydicom cannot parse
            log.warning("refused an instance that could not be decoded (%s)", type(err).__name__)
            return STATUS_CANNOT_UNDERSTAND
        if not all(uids) or not sop_uid:
            log.warning("refused an instance without Study/Series/SOP Instance UID")
            return STATUS_DATASET_MISMATCH
        try:
            self.writer.store(uids[0], uids[1], sop_uid, event.encoded_dataset(include_meta=True))
        except OSError as err:
            log.error("could not write an instance into %s: %s", self.config.drop, err.strerror or err)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    # -- lifecycle ---------------------------------------------------------------------------------

    def _application_entity(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        if self.config.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.allowed_calling_aes)
        else:
            log.warning("no --allow-ae given: any calling AE title may send to %s", self.config.ae_title)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for uid in MR_STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = 16
        return ae

    def _watch(self) -> None:
        interval = min(1.0, self.config.quiet_seconds / 4)
        while not self._stop.wait(interval):
            self.writer.mark_quiet_studies()

    def start(self) -> tuple[str, int]:
        """Listen (non-blocking); returns the bound (host, port), useful when port 0 was asked."""
        from pynetdicom import evt

        ae = self._application_entity()
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.config.host, int(self.config.port)), block=False, evt_handlers=handlers)
        self._watcher = threading.Thread(target=self._watch, name="receiver-ready", daemon=True)
        self._watcher.start()
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def wait(self, stop_when: Callable[[], bool] | None = None) -> None:
        """Block until `stop()` is called (from another thread) or `stop_when()` turns true."""
        while not self._stop.wait(0.5):
            if stop_when is not None and stop_when():
                break


def quiet_pynetdicom_logs(level: int = logging.WARNING) -> None:
    """pynetdicom's debug/info logs can dump whole datasets (patient names); keep them at `level`."""
    logging.getLogger("pynetdicom").setLevel(level)


def allowed(titles: Sequence[str] | None) -> tuple[str, ...]:
    """--allow-ae values (repeatable, or comma-separated) as a tuple of titles."""
    out: list[str] = []
    for t in titles or ():
        out.extend(p for p in (s.strip() for s in t.split(",")) if p)
    return tuple(out)
