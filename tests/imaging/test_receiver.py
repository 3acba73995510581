"""The DICOM receiver over loopback, driven by pynetdicom's own storescu/echoscu with real series."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from imaging.dicom import scan_source
from imaging.dicom.drop import DROP_MARKER, INCOMING, READY, pending_studies
from imaging.dicom.receiver import DropWriter, Receiver, ReceiverConfig

ROOT = Path(__file__).resolve().parents[2]
TITLE, SENDER = "MRIFOUNDRY", "PACS1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scu(tool: str, port: int, *args: str, calling: str = SENDER, called: str = TITLE) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pynetdicom", tool, "127.0.0.1", str(port), *args, "-aet", calling, "-aec", called]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _dcm_files(drop: Path) -> list[Path]:
    return sorted(p for p in drop.rglob("*.dcm") if INCOMING not in p.parts)


def _wait_for(predicate, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture(scope="module")
def ge_files(dicom_data: Path) -> list[Path]:
    return sorted((dicom_data / "ge_t1_scrambled_pixels" / "In").iterdir())


@pytest.fixture()
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, int]]:
    r = Receiver(ReceiverConfig(TITLE, 0, tmp_path / "drop", (SENDER,), quiet_seconds=1.5, host="127.0.0.1"))
    _, port = r.start()
    yield r, port
    r.stop()


def _link_subset(files: list[Path], out: Path) -> Path:
    out.mkdir()
    for f in files:
        os.symlink(f, out / f.name)
    return out


def test_cli_receives_classic_and_enhanced_over_a_real_association(
    tmp_path: Path, dicom_data: Path, ge_files: list[Path]
) -> None:
    """`mrifoundry receive` as a process: echo, two real series pushed, files intact, PHI-free names."""
    drop, port = tmp_path / "drop", _free_port()
    cmd = [sys.executable, "-m", "flows.cli", "receive", "--ae-title", TITLE, "--port", str(port)]
    cmd += ["--drop", str(drop), "--allow-ae", SENDER, "--quiet-seconds", "1", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(lambda: _scu("echoscu", port).returncode == 0 or proc.poll() is not None)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        enhanced = dicom_data / "siemens_xa30_enhanced_t1" / "In"
        for path in (enhanced, dicom_data / "ge_t1_scrambled_pixels" / "In"):
            sent = _scu("storescu", port, str(path), "-r", "-cx")
            assert sent.returncode == 0, sent.stderr
        sources = [*enhanced.iterdir(), *ge_files]
        assert _wait_for(lambda: len(list(drop.glob(f"study-*/{READY}"))) == 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    received = _dcm_files(drop)
    assert len(received) == len(sources)
    # every instance arrived byte-identical in its dataset, under a name that says nothing about it
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in received}
    phi = set()
    for src in sources:
        ds = pydicom.dcmread(src)
        got = pydicom.dcmread(by_uid[ds.SOPInstanceUID])
        assert got.PixelData == ds.PixelData and got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        phi |= {str(ds.get(k, "")) for k in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID")}
    phi = {v for v in phi if len(v) >= 3}
    names = " ".join(str(p.relative_to(drop)) for p in drop.rglob("*"))
    assert not [v for v in phi if v in names or v in out]
    assert (drop / DROP_MARKER).is_file() and not list((drop / INCOMING).iterdir())
    # curate's scan reads them back as the two series that were sent
    labels = sorted(s.header.sop_class_uid for s in scan_source(drop, workers=1).series)
    assert labels == ["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"]


def test_unlisted_calling_ae_is_refused_at_association(
    receiver: tuple[Receiver, int], dicom_data: Path, tmp_path: Path
) -> None:
    r, port = receiver
    enhanced = dicom_data / "siemens_xa30_enhanced_t1" / "In"
    refused = _scu("storescu", port, str(enhanced), "-r", calling="INTRUDER")
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr
    wrong_called = _scu("echoscu", port, called="SOMEONE_ELSE")
    assert wrong_called.returncode != 0
    assert _dcm_files(r.config.drop) == []
    assert _scu("storescu", port, str(enhanced), "-r").returncode == 0  # the listed sender gets through
    assert len(_dcm_files(r.config.drop)) == 1


def test_legacy_converted_enhanced_is_stored_and_other_sop_classes_are_not(
    receiver: tuple[Receiver, int], dicom_data: Path, tmp_path: Path
) -> None:
    r, port = receiver
    (src,) = (dicom_data / "siemens_xa30_enhanced_t1" / "In").iterdir()
    for name, sop_class in (("legacy", "1.2.840.10008.5.1.4.1.1.4.4"), ("capture", "1.2.840.10008.5.1.4.1.1.7")):
        ds = pydicom.dcmread(src)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        (tmp_path / name).mkdir()
        ds.save_as(tmp_path / name / "x.dcm")
    assert _scu("storescu", port, str(tmp_path / "legacy"), "-r", "-cx").returncode == 0
    (stored,) = _dcm_files(r.config.drop)
    assert pydicom.dcmread(stored, stop_before_pixels=True).SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.4"
    refused = _scu("storescu", port, str(tmp_path / "capture"), "-r", "-cx")
    assert refused.returncode != 0 and "No accepted presentation contexts" in refused.stderr
    assert len(_dcm_files(r.config.drop)) == 1


def test_interrupted_study_is_invisible_to_curate_until_quiet(ge_files: list[Path], tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    r = Receiver(ReceiverConfig(TITLE, 0, drop, (SENDER,), quiet_seconds=3, host="127.0.0.1"))
    _, port = r.start()
    try:
        _interrupted_study(drop, port, ge_files, tmp_path)
    finally:
        r.stop()


def _interrupted_study(drop: Path, port: int, ge_files: list[Path], tmp_path: Path) -> None:
    first = _link_subset(ge_files[:40], tmp_path / "first")
    assert _scu("storescu", port, str(first), "-r", "-cx").returncode == 0
    # mid-study: 40 files on disk, but the scan that curate runs sees no series and no stray files
    assert len(_dcm_files(drop)) == 40 and len(pending_studies(drop)) == 1
    early = scan_source(drop, workers=1)
    assert early.series == () and early.n_files == 0
    # the sender went quiet: the study becomes ready and is picked up
    assert _wait_for(lambda: not pending_studies(drop))
    (series,) = scan_source(drop, workers=1).series
    assert series.n_instances == 40
    # the rest arrives late: the study is hidden again until it is quiet again, then complete
    rest = _link_subset(ge_files[40:], tmp_path / "rest")
    assert _scu("storescu", port, str(rest), "-r", "-cx").returncode == 0
    if pending_studies(drop):  # unless the quiet period already passed while the files were listed
        assert scan_source(drop, workers=1).series == ()
    assert _wait_for(lambda: not pending_studies(drop))
    (series,) = scan_source(drop, workers=1).series
    assert series.n_instances == len(ge_files)
    assert series.rejection is None, series.rejection_detail


def test_readiness_follows_the_clock_and_survives_a_restart(tmp_path: Path, ge_files: list[Path]) -> None:
    now = [1000.0]
    writer = DropWriter(tmp_path / "drop", quiet_seconds=60, clock=lambda: now[0])
    path = writer.store("1.2.3", "1.2.3.4", "1.2.3.4.5", ge_files[0].read_bytes())
    study = path.parents[1]
    now[0] += 59
    assert writer.mark_quiet_studies() == [] and not (study / READY).exists()
    now[0] += 1
    assert writer.mark_quiet_studies() == [study] and (study / READY).is_file()
    writer.store("1.2.3", "1.2.3.4", "1.2.3.4.6", ge_files[1].read_bytes())  # late instance
    assert not (study / READY).exists()
    # a restarted receiver finds the unfinished study and times it from its newest file
    restarted = DropWriter(tmp_path / "drop", quiet_seconds=3600)
    assert restarted.pending() == 1 and restarted.mark_quiet_studies() == []
    assert ReceiverConfig(TITLE, 104, tmp_path).quiet_seconds == 120
    with pytest.raises(ValueError, match="AE title"):
        ReceiverConfig("A" * 17, 104, tmp_path)
