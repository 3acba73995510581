"""BIDS input: a small BIDS dataset written from the shared real NIfTI, curated end to end.

The subject and session labels are planted PHI-like strings: they must appear nowhere in the manifest
or in the warehouse's file names. A second file whose suffix (T2w) contradicts its sidecar physics
(an MPRAGE) is held for class review, not curated. Sources with nothing to read fail with one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.cli import main
from imaging.bids import BidsRecord, classify_bids_record, header_from_sidecar, scan_bids
from warehouse.manifest import Manifest

SUB, SES = "MUELLERHANS", "19450101"
"""Raw BIDS labels that must never reach the warehouse."""

MPRAGE = {
    "Modality": "MR",
    "Manufacturer": "Siemens",
    "ManufacturersModelName": "Prisma",
    "MagneticFieldStrength": 3,
    "SeriesDescription": "t1_mprage_sag",
    "RepetitionTime": 2.3,
    "EchoTime": 0.00298,
    "InversionTime": 0.9,
    "FlipAngle": 9,
    "ScanningSequence": "GR_IR",
    "SequenceVariant": "SK_SP_MP",
    "ScanOptions": "IR",
    "MRAcquisitionType": "3D",
    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
}
"""Sidecar of a Siemens MPRAGE as dcm2niix writes it (times in seconds)."""


def _write_bids(root: Path, shared: Path, mislabelled: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bids-input-test", "BIDSVersion": "1.9.0"}))
    anat = root / f"sub-{SUB}" / f"ses-{SES}" / "anat"
    anat.mkdir(parents=True)
    t1 = anat / f"sub-{SUB}_ses-{SES}_T1w.nii.gz"
    shutil.copyfile(shared / "nifti" / "t1w_chris.nii.gz", t1)
    (anat / f"sub-{SUB}_ses-{SES}_T1w.json").write_text(json.dumps(MPRAGE))
    if mislabelled:
        # Filed as T2w, but the scanner says inversion-prepared short-TE gradient echo (T1w physics).
        t2 = anat / f"sub-{SUB}_ses-{SES}_acq-fast_T2w.nii.gz"
        shutil.copyfile(shared / "nifti" / "t2w_head.nii.gz", t2)
        (anat / f"sub-{SUB}_ses-{SES}_acq-fast_T2w.json").write_text(json.dumps({**MPRAGE, "SeriesDescription": ""}))
    return root


# ------------------------------------------------------------------------------------------- units


def test_sidecar_seconds_become_header_milliseconds() -> None:
    h = header_from_sidecar(MPRAGE, (176, 240, 256), (1.0, 1.0, 1.0))
    assert h.repetition_time == pytest.approx(2300.0) and h.echo_time == pytest.approx(2.98)
    assert h.inversion_time == pytest.approx(900.0)
    assert h.scanning_sequence == ("GR", "IR") and h.sequence_variant == ("SK", "SP", "MP")
    assert h.mr_acquisition_type == "3D" and h.rows == 176 and h.columns == 240


def test_scan_finds_anat_files_and_checks_suffix_against_physics(shared_data: Path, tmp_path: Path) -> None:
    root = _write_bids(tmp_path / "bids", shared_data)
    (root / "README").write_text("not an image")
    scan = scan_bids(root)
    assert len(scan.series) == 2 and not scan.rejected_files
    by_suffix = {r.suffix: r for r in scan.series if isinstance(r, BidsRecord)}
    t1, t2 = by_suffix["T1w"], by_suffix["T2w"]
    assert t1.study_uid == t2.study_uid and t1.patient_id == t2.patient_id and t1.series_uid != t2.series_uid
    assert t1.rejection is None and t1.n_slices > 10
    c1, c2 = classify_bids_record(t1), classify_bids_record(t2)
    assert c1.label == "T1w" and not c1.needs_review, c1
    assert c2.needs_review and c2.label != "T2w" and "suffix T2w" in c2.explanation, c2


def test_inherited_sidecar_and_a_4d_image(shared_data: Path, tmp_path: Path) -> None:
    """A top-level T1w.json applies to every T1w; a 4D image is rejected with the DICOM scan's code."""
    import nibabel as nib
    import numpy as np

    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-02" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    (root / "T1w.json").write_text(json.dumps(MPRAGE))
    shutil.copyfile(shared_data / "nifti" / "t1w_chris.nii.gz", root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 12, 3), np.float32), np.eye(4)), root / "sub-02/anat/sub-02_T1w.nii")
    recs = {r.patient_id: r for r in scan_bids(root).series}
    assert set(recs) == {"bids:x:sub-01", "bids:x:sub-02"}
    ok, four_d = recs["bids:x:sub-01"], recs["bids:x:sub-02"]
    assert ok.header.inversion_time == pytest.approx(900.0) and ok.rejection is None
    c = classify_bids_record(ok)
    assert c.label == "T1w" and not c.needs_review, c
    assert four_d.rejection == "inconsistent_geometry" and four_d.n_volumes == 3


# --------------------------------------------------------------------------------------- end to end


def test_curate_bids_dataset(shared_data: Path, tmp_path: Path, prefect_harness) -> None:
    from flows.curate import curate_flow

    root = _write_bids(tmp_path / "bids", shared_data)
    wh = tmp_path / "wh"
    out = curate_flow(str(root), str(wh), skullstrip="deepbet")
    m = Manifest(wh)
    rows = m.query(
        "SELECT s.series_key, s.subject_id, s.study_id, s.state, s.reason, c.label, c.explanation "
        "FROM series s JOIN classification c USING (series_key)"
    )
    assert len(rows) == 2, rows
    curated = [r for r in rows if r["state"] == "curated"]
    held = [r for r in rows if r["state"] != "curated"]
    assert len(curated) == 1 and curated[0]["label"] == "T1w", rows
    assert len(held) == 1 and held[0]["state"] == "review" and "suffix T2w" in held[0]["explanation"], rows
    assert curated[0]["subject_id"].startswith("sub-") and curated[0]["study_id"].startswith("ses-")
    assert curated[0]["subject_id"] == held[0]["subject_id"] and curated[0]["study_id"] == held[0]["study_id"]

    vols = m.query(
        "SELECT v.converter, v.native_path, v.registered_path, q.decision FROM volumes v JOIN qc q USING (volume_id)"
    )
    assert len(vols) == 1 and vols[0]["converter"] == "bids-nifti", vols
    assert (wh / vols[0]["registered_path"]).is_file()
    assert vols[0]["decision"] == "pass", vols
    assert out["snapshot_volumes"] == 1, out

    dump = []
    with m.connect(read_only=True) as con:
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            dump.append(json.dumps(con.execute(f"SELECT * FROM {name}").fetchall(), default=str))
    names = "\n".join(str(p.relative_to(wh)) for p in wh.rglob("*"))
    for raw in (SUB, SES, "bids-input-test"):
        assert raw not in "\n".join(dump), f"{raw} in the manifest"
        assert raw not in names, f"{raw} in a warehouse path"
        assert raw not in json.dumps(out, default=str)

    # Rerun: the same files are unchanged, nothing is redone.
    again = curate_flow(str(root), str(wh), skullstrip="deepbet")
    assert Manifest(wh).count("volumes") == 1 and again["snapshot_volumes"] == 1


# ------------------------------------------------------------------------------- no readable input


def _nifti_folder(shared: Path, root: Path) -> Path:
    root.mkdir()
    shutil.copyfile(shared / "nifti" / "flair_lesions.nii.gz", root / "flair.nii.gz")
    return root


@pytest.mark.parametrize("command", ["curate", "classify"])
def test_nifti_without_bids_layout_is_an_error(command: str, shared_data: Path, tmp_path: Path, capsys) -> None:
    src = _nifti_folder(shared_data, tmp_path / "plain")
    extra = ["--warehouse", str(tmp_path / "wh")] if command == "curate" else []
    assert main([command, str(src), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NIfTI" in err and "BIDS" in err, err
    assert not (tmp_path / "wh").exists()


@pytest.mark.parametrize("command", ["curate", "classify"])
def test_empty_source_is_an_error(command: str, tmp_path: Path, capsys) -> None:
    src = tmp_path / "empty"
    src.mkdir()
    extra = ["--warehouse", str(tmp_path / "wh")] if command == "curate" else []
    assert main([command, str(src), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no files" in err, err


@pytest.fixture
def junk_source(tmp_path: Path) -> Path:
    """A folder whose only file could be DICOM by name but is not."""
    src = tmp_path / "junk"
    src.mkdir()
    (src / "IM0001").write_bytes(b"not a dicom file at all" * 10)
    return src


def test_classify_source_with_no_dicom_is_an_error(junk_source: Path, capsys) -> None:
    """Files that could be DICOM by name but are not: the scan decides, and says so."""
    assert main(["classify", str(junk_source)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable input" in err, err


def test_curate_flow_rejects_a_source_without_series(junk_source: Path, tmp_path: Path, prefect_harness) -> None:
    """The flow itself (deployments call it without the CLI's quick check) fails, not an empty success."""
    from flows.curate import curate_flow
    from imaging.bids import NoInputError

    with pytest.raises(NoInputError, match="no readable input"):
        curate_flow(str(junk_source), str(tmp_path / "wh"))


def test_classify_prints_bids_rows(shared_data: Path, tmp_path: Path, capsys) -> None:
    root = _write_bids(tmp_path / "bids", shared_data)
    assert main(["classify", str(root), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_path = {r["series_instance_uid"].rsplit("_", 1)[-1]: r for r in rows}
    assert by_path["T1w.nii.gz"]["label"] == "T1w" and not by_path["T1w.nii.gz"]["needs_review"]
    assert by_path["T2w.nii.gz"]["needs_review"], rows
