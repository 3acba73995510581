"""`export-bids`: a snapshot written as BIDS derivatives that the bids-validator package accepts.

The warehouse is the dashboard tests' small curated one (real NIfTI files on the model grid); its
passing volumes are sharded into a snapshot, exported, and every file name is checked against the
BIDS schema rules that the `bids-validator` package ships (its raw-data rules plus the schema's
derivative rules: `BIDSValidator.is_bids` in 1.14 indexes raw rules only).
"""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flows.cli import main as cli
from tasks.context import open_warehouse
from tasks.export_bids import SPACE, bids_label, export_bids
from tasks.shards import build_shards
from tests.dashboard.conftest import PHI_SENTINEL, VOLUMES
from tests.dashboard.conftest import _build as build_small_warehouse


@cache
def _validator() -> type:
    import bidsschematools.rules
    import bidsschematools.schema
    from bids_validator import BIDSValidator

    BIDSValidator._init_regexes()
    schema = bidsschematools.schema.load_schema()
    deriv = [
        r["regex"] for r in bidsschematools.rules.regexify_filename_rules(schema.rules.files.deriv, schema, level=2)
    ]

    class DerivativesValidator(BIDSValidator):
        regexes = [*BIDSValidator.regexes, *deriv]

    return DerivativesValidator


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    root = build_small_warehouse(tmp_path_factory.mktemp("export") / "warehouse")
    ctx = open_warehouse(root)
    snap = build_shards(ctx).snapshot_id
    assert snap
    out = root.parent / "bids"
    res = export_bids(ctx.manifest, snap, out, code_version="test-1")
    assert res.out == out and res.snapshot_id == snap
    return root, snap, out


def _files(out: Path) -> list[str]:
    return sorted("/" + p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_every_file_is_valid_bids(exported):
    _, _, out = exported
    v = _validator()
    files = _files(out)
    assert [f for f in files if not v.is_bids(f)] == []
    # the validator can say no: wrong suffix, a missing subject, an unknown entity
    for bad in (
        "/sub-01/ses-01/anat/sub-01_ses-01_space-X_desc-preproc_T1x.nii.gz",
        "/sub-01/ses-01/anat/ses-01_desc-preproc_T1w.nii.gz",
        "/sub-01/ses-01/anat/sub-01_ses-01_colour-red_T1w.nii.gz",
        "/qc.tsv",
    ):
        assert not v.is_bids(bad), bad
    # the package's own raw-data rules accept the top-level and per-session tables unchanged
    from bids_validator import BIDSValidator

    raw = BIDSValidator()
    for f in files:
        if f.endswith(("_scans.tsv", "dataset_description.json", "participants.tsv", "/README")):
            assert raw.is_bids(f), f


def test_dataset_description_names_the_generator_and_snapshot(exported):
    _, snap, out = exported
    d = json.loads((out / "dataset_description.json").read_text())
    assert d["DatasetType"] == "derivative" and d["BIDSVersion"]
    assert d["GeneratedBy"][0]["Name"] == "mrifoundry" and d["GeneratedBy"][0]["Version"] == "test-1"
    assert d["SnapshotID"] == snap and snap in d["GeneratedBy"][0]["Description"]


def test_images_masks_and_qc_match_the_warehouse(exported):
    root, snap, out = exported
    m = open_warehouse(root).manifest
    members = m.query(
        "SELECT v.*, q.snr, q.decision FROM snapshot_volumes sv JOIN volumes v USING (volume_id) "
        "JOIN qc q USING (volume_id) WHERE sv.snapshot_id = ?",
        [snap],
    )
    assert len(members) == sum(v.decision == "pass" for v in VOLUMES)
    v = _validator()
    images = [f for f in _files(out) if f.endswith(".nii.gz") and "_desc-preproc_" in f]
    masks = [f for f in _files(out) if f.endswith("_mask.nii.gz")]
    assert len(images) == len(masks) == len(members)
    assert all(f"_space-{SPACE}_" in f for f in images + masks)

    scans = {}
    for tsv in out.rglob("*_scans.tsv"):
        with tsv.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                scans[row["volume_id"]] = (tsv.parent, row)
    assert set(scans) == {r["volume_id"] for r in members}
    for r in members:
        ses_dir, row = scans[r["volume_id"]]
        image = ses_dir / row["filename"]
        ents = v.parse("/" + image.relative_to(out).as_posix())
        assert ents["subject"] == bids_label(r["subject_id"]) and ents["session"] == bids_label(r["study_id"])
        assert ents["suffix"] == r["label"] == row["label"]
        got = np.asarray(nib.load(image).dataobj)
        want = np.asarray(nib.load(root / r["registered_path"]).dataobj)
        assert np.array_equal(got, want)
        mask = image.with_name(image.name.replace(f"desc-preproc_{r['label']}", f"desc-brain{r['label']}_mask"))
        assert mask.is_file()
        assert np.array_equal(np.asarray(nib.load(mask).dataobj), np.asarray(nib.load(root / r["mask_path"]).dataobj))
        assert float(row["snr"]) == pytest.approx(r["snr"]) and row["decision"] == r["decision"] == "pass"
    # two T1w of one subject in one study: run-1 and run-2
    assert any("_run-2_" in f for f in images)


def test_no_phi_and_no_warehouse_paths_in_text_files(exported):
    root, _, out = exported
    for p in out.rglob("*"):
        if p.is_file() and not p.name.endswith(".nii.gz"):
            text = p.read_text()
            assert PHI_SENTINEL not in text and str(root) not in text and "derivatives/" not in text, p


def test_cli_exports_and_refuses_bad_requests(exported, tmp_path: Path, capsys):
    root, snap, _ = exported
    out = tmp_path / "cli-bids"
    assert cli(["export-bids", "--warehouse", str(root), "--snapshot", "latest", str(out)]) == 0
    assert snap in capsys.readouterr().out
    assert json.loads((out / "dataset_description.json").read_text())["SnapshotID"] == snap
    # an existing dataset is not overwritten, an unknown snapshot is named, and nothing is left behind
    assert cli(["export-bids", "--warehouse", str(root), "--snapshot", snap, str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli(["export-bids", "--warehouse", str(root), "--snapshot", "snap-nope", str(tmp_path / "x")]) == 2
    assert "snap-nope" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli-bids"]
