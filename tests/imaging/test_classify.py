"""classify_series on real headers, on known traps, and scored on the labelled dev CSV."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from imaging.classify import classify_series
from imaging.dicom import SeriesHeader, scan_source

BENCH = Path(__file__).resolve().parents[2] / "bench" / "classify_accuracy.py"
# Goals of issue 3 on the dev CSV: overall accuracy, and recall of each structural class.
MIN_ACCURACY = 0.97
MIN_RECALL = 0.95


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/classify_accuracy.py, which turns CSV rows into scanner-written DICOM headers."""
    spec = importlib.util.spec_from_file_location("bench_classify_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dev_rows(shared_data: Path) -> list[dict[str, str]]:
    with open(shared_data / "series_metadata_dev.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_dev_csv_accuracy(bench: ModuleType, dev_rows: list[dict[str, str]]) -> None:
    scored = bench.score(dev_rows)
    assert len(scored) == 1332
    raw = bench.metrics([(s.truth, s.result.label) for s in scored])
    noted = bench.metrics(bench.relabelled(scored))
    recall = {k: v["recall"] for k, v in raw["per_class"].items()}
    report = f"accuracy {raw['accuracy']:.4f}; recall {recall}; confusion {dict(raw['confusion'])}"
    assert raw["accuracy"] >= MIN_ACCURACY, report
    assert recall["T1w"] >= MIN_RECALL and recall["FLAIR"] >= MIN_RECALL, report
    # T2w misses are exactly the noted ds000201 T2-FLAIR rows (physics: IR, TI 1.86 s, TE 126 ms) ...
    t2_misses = {
        (s.row["dataset"], s.row["SeriesDescription"], s.result.label)
        for s in scored
        if s.truth == "T2w" and s.result.label != "T2w"
    }
    assert t2_misses <= {("ds000201", "Sag CUBE T2 flair", "FLAIR")}, t2_misses
    # ... and with those scored by their physics every structural class clears the goal
    for label in ("T1w", "T2w", "FLAIR"):
        assert noted["per_class"][label]["recall"] >= MIN_RECALL, (label, noted["per_class"][label])
        assert noted["per_class"][label]["precision"] >= MIN_RECALL, (label, noted["per_class"][label])
    assert all(s.result.explanation.startswith(s.result.label + " because ") for s in scored)
    assert all(0.0 <= s.result.confidence <= 1.0 for s in scored)
    # whatever is still wrong was at least sent to a reviewer
    assert all(s.result.needs_review for s in scored if bench.relabelled([s])[0][0] != s.result.label)


def test_header_builder_writes_what_a_scanner_writes(bench: ModuleType, dev_rows: list[dict[str, str]]) -> None:
    by_key = {(r["dataset"], r["SeriesDescription"], r["bids_suffix"]): r for r in dev_rows}
    mprage = bench.dataset_from_row(by_key[("ds003826", "anat_cz1", "T1w")])
    assert list(mprage.ScanningSequence) == ["GR", "IR"] and list(mprage.SequenceVariant) == ["SK", "SP", "MP"]
    assert mprage.SequenceName == "*tfl3d1_16ns"  # old dcm2niix wrote the leading '*' as '_'
    assert float(mprage.RepetitionTime) == 2300.0 and float(mprage.InversionTime) == 900.0  # ms
    assert mprage.Manufacturer == "SIEMENS"
    ge = bench.dataset_from_row(by_key[("ds000031", "T1w 1mm ax", "T1w")])
    assert list(ge.ScanOptions) == ["FAST_GEMS", "EDR_GEMS", "ACC_GEMS"]  # vendor terms keep their '_'
    phase = bench.dataset_from_row(by_key[("ds000031", "gre_field_mapping", "phasediff")])
    assert list(phase.ImageType) == ["ORIGINAL", "PRIMARY", "P", "ND", "PHASE"]
    label_columns = ("label", "bids_suffix", "datatype", "acq", "TaskName", "dataset", "subject", "session")
    for row in dev_rows[::50]:
        text = " | ".join(str(e.value) for e in bench.dataset_from_row(row).iterall())
        for column in label_columns:
            value = row.get(column, "")
            if len(value) >= 4 and value not in row["SeriesDescription"] + row["ProtocolName"]:
                assert value not in text, (column, value)


@pytest.fixture(scope="module")
def philips(philips_flat_gunzipped: Path) -> dict[int | None, SeriesHeader]:
    return {s.header.series_number: s.header for s in scan_source(philips_flat_gunzipped).series}


def test_philips_mprage_with_shot_tr_and_no_ti_is_t1w(philips: dict[int | None, SeriesHeader]) -> None:
    h = philips[1301]
    assert "MPRAGE" in h.series_description and h.repetition_time < 10
    c = classify_series(h)
    assert c.label == "T1w" and not c.needs_review and c.confidence >= 0.9
    assert "TR=6.501 ms" in c.explanation and "'mprage' in SeriesDescription" in c.explanation
    assert "TI=900 ms" in c.explanation  # from Philips' private prepulse delay
    # without the private TI (stripped by an anonymiser) and without a description, physics still says T1w
    bare = dataclasses.replace(h, inversion_time=None, series_description="", protocol_name="ImageMRSERIES")
    blank = classify_series(bare)
    assert blank.label == "T1w" and "magnetization-prepared gradient echo" in blank.explanation


@pytest.mark.parametrize("number", [1901, 1903, 2001])
def test_philips_asl_and_field_map_are_other(philips: dict[int | None, SeriesHeader], number: int) -> None:
    c = classify_series(philips[number])
    assert c.label == "other", c.explanation
    assert not c.contrast_enhanced


def test_enhanced_xa30_is_t1w(shared_data: Path) -> None:
    (s,) = scan_source(shared_data / "dicom" / "siemens_xa30_enhanced_t1" / "In").series
    c = classify_series(s.header)
    assert c.label == "T1w" and "TI=900 ms" in c.explanation


def test_ge_mprage_rm_ir_is_t1w(shared_data: Path) -> None:
    (s,) = scan_source(shared_data / "dicom" / "ge_t1_scrambled_pixels" / "In").series
    assert s.header.scanning_sequence == ("RM", "IR")
    c = classify_series(s.header)
    assert c.label == "T1w", c.explanation


BASE = SeriesHeader(
    modality="MR",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
    manufacturer="SIEMENS",
    model_name="Prisma",
    field_strength=3.0,
    series_description="",
    protocol_name="",
    sequence_name="",
    repetition_time=None,
    echo_time=None,
    inversion_time=None,
    flip_angle=None,
    scanning_sequence=(),
    sequence_variant=(),
    scan_options=(),
    mr_acquisition_type="2D",
    image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
    contrast_agent="",
    rows=256,
    columns=256,
    pixel_spacing=(1.0, 1.0),
    slice_thickness=1.0,
    series_number=1,
    study_date="",
)


def h(**kw: object) -> SeriesHeader:
    return dataclasses.replace(BASE, **kw)


MPRAGE = {
    "repetition_time": 2300.0,
    "echo_time": 2.98,
    "inversion_time": 900.0,
    "flip_angle": 9.0,
    "scanning_sequence": ("GR", "IR"),
    "sequence_variant": ("SK", "SP", "MP"),
    "mr_acquisition_type": "3D",
}
T2_TSE = {
    "repetition_time": 5000.0,
    "echo_time": 102.0,
    "flip_angle": 150.0,
    "scanning_sequence": ("SE",),
    "sequence_variant": ("SK", "SP"),
}
FLAIR = {
    "repetition_time": 9000.0,
    "echo_time": 85.0,
    "inversion_time": 2500.0,
    "flip_angle": 150.0,
    "scanning_sequence": ("SE", "IR"),
    "sequence_variant": ("SK", "SP", "MP"),
}


@pytest.mark.parametrize(
    ("header", "label"),
    [
        (h(**T2_TSE, series_description="T2_TSE_tra"), "T2w"),
        (h(**FLAIR, series_description="t2_tirm_tra_dark-fluid"), "FLAIR"),
        (h(**MPRAGE, series_description="t1_mprage_sag"), "T1w"),
        # T1-weighted FLAIR: inversion with short TE is T1 contrast whatever the name says
        (
            h(
                repetition_time=2000.0,
                echo_time=12.0,
                inversion_time=860.0,
                flip_angle=90.0,
                scanning_sequence=("SE", "IR"),
                series_description="T1 FLAIR sag",
            ),
            "T1w",
        ),
        (h(**MPRAGE, series_description="mp2rage_INV1"), "other"),
        (h(**{**MPRAGE, "inversion_time": 2500.0}, series_description="MP2RAGE_INV2"), "other"),
        (h(**{**MPRAGE, "inversion_time": 2500.0}), "other"),  # long TI, short TE: not FLAIR
        (h(repetition_time=3000.0, echo_time=12.0, scanning_sequence=("SE",), series_description="PD_tse"), "other"),
        (h(repetition_time=3000.0, echo_time=12.0, scanning_sequence=("SE",)), "other"),  # PD by timing
        (
            h(
                repetition_time=650.0,
                echo_time=20.0,
                flip_angle=20.0,
                scanning_sequence=("GR",),
                series_description="t2_fl2d_tra_hemo",
            ),
            "other",
        ),
        (
            h(
                repetition_time=27.0,
                echo_time=20.0,
                flip_angle=15.0,
                scanning_sequence=("GR",),
                mr_acquisition_type="3D",
                series_description="SWI_Images",
            ),
            "other",
        ),
        (
            h(
                repetition_time=22.0,
                echo_time=3.6,
                flip_angle=18.0,
                scanning_sequence=("GR",),
                mr_acquisition_type="3D",
                series_description="tof_fl3d_tra_multi-slab",
            ),
            "other",
        ),
        (
            h(
                repetition_time=5300.0,
                echo_time=89.0,
                scanning_sequence=("EP",),
                series_description="ep2d_diff_mddw",
                image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"),
            ),
            "other",
        ),
        (
            h(
                repetition_time=2000.0,
                echo_time=30.0,
                flip_angle=90.0,
                scanning_sequence=("EP",),
                series_description="ep2d_bold_rest",
            ),
            "other",
        ),
        (h(repetition_time=4600.0, echo_time=16.0, scanning_sequence=("EP",), series_description="pcasl_3d"), "other"),
        (
            h(
                repetition_time=600.0,
                echo_time=4.92,
                flip_angle=60.0,
                scanning_sequence=("GR",),
                sequence_name="*fm2d2r",
                series_description="gre_field_mapping",
            ),
            "other",
        ),
        (
            h(
                repetition_time=600.0,
                echo_time=7.38,
                flip_angle=60.0,
                scanning_sequence=("GR",),
                image_type=("ORIGINAL", "PRIMARY", "P", "ND", "PHASE"),
            ),
            "other",
        ),
        # GE BRAVO: IR-prepared fast SPGR with TI written but no IR in ScanningSequence
        (
            h(
                repetition_time=8.2,
                echo_time=3.2,
                inversion_time=450.0,
                flip_angle=12.0,
                scanning_sequence=("GR",),
                sequence_variant=("SS", "SK"),
                series_description="Sag BRAVO",
            ),
            "T1w",
        ),
        # GE CUBE T2 with TE < 80 ms: timing is undecided, the name decides
        (
            h(
                repetition_time=2500.0,
                echo_time=75.0,
                flip_angle=90.0,
                scanning_sequence=("SE",),
                mr_acquisition_type="3D",
                series_description="Sag CUBE T2",
            ),
            "T2w",
        ),
        # Siemens SPACE reports the echo-train TE (hundreds of ms)
        (
            h(
                repetition_time=3200.0,
                echo_time=408.0,
                flip_angle=120.0,
                scanning_sequence=("SE",),
                mr_acquisition_type="3D",
                series_description="t2_space_sag_p2_iso",
            ),
            "T2w",
        ),
    ],
)
def test_known_cases(header: SeriesHeader, label: str) -> None:
    c = classify_series(header)
    assert c.label == label, c.explanation


def test_explanation_names_the_evidence() -> None:
    c = classify_series(h(**T2_TSE, series_description="T2_TSE_tra"))
    assert c.explanation.startswith("T2w because ")
    assert "TE=102 ms" in c.explanation and "'t2' in SeriesDescription" in c.explanation
    assert c.confidence >= 0.9 and not c.needs_review


def test_disagreement_goes_to_review_with_lower_confidence() -> None:
    agree = classify_series(h(**T2_TSE, series_description="T2_TSE_tra"))
    clash = classify_series(h(**T2_TSE, series_description="T1_sag"))
    assert clash.label == "T2w"  # strong physics wins the label ...
    assert clash.needs_review and clash.confidence < agree.confidence  # ... but a human checks
    assert "T1w" in clash.explanation and "T2w" in clash.explanation
    flair_named_t1 = classify_series(h(**FLAIR, series_description="T1 sag"))
    assert flair_named_t1.label == "FLAIR" and flair_named_t1.needs_review


def test_no_evidence_is_other_for_review() -> None:
    c = classify_series(h())
    assert c.label == "other" and c.needs_review and c.confidence < 0.5


def test_contrast_enhanced_flag() -> None:
    assert classify_series(h(**MPRAGE, series_description="t1_mprage_sag", contrast_agent="Gadovist")).contrast_enhanced
    assert classify_series(h(**MPRAGE, series_description="T1 MPRAGE POST")).contrast_enhanced
    assert classify_series(h(**MPRAGE, series_description="t1_mprage+C")).contrast_enhanced
    assert not classify_series(h(**MPRAGE, series_description="t1_mprage_sag")).contrast_enhanced
    assert not classify_series(h(**MPRAGE, series_description="T1 MPRAGE PRE contrast")).contrast_enhanced
    assert not classify_series(h(**MPRAGE, series_description="t1_mprage_posterior_fossa")).contrast_enhanced


@pytest.mark.parametrize(
    ("header", "label", "why"),
    [
        # MP2RAGE first inversion without a telling name: an MPRAGE-like image, but TR >= 4 s
        (h(**{**MPRAGE, "repetition_time": 5000.0, "inversion_time": 700.0}), "other", "MP2RAGE"),
        (h(**MPRAGE, series_description="anat_mp2rage_inv1"), "other", "MP2RAGE"),
        # angiography that times like a T1 spoiled gradient echo
        (
            h(repetition_time=22.0, echo_time=3.6, flip_angle=18.0, scanning_sequence=("GR",), angio_flag=True),
            "other",
            "angiography",
        ),
        (
            h(
                repetition_time=22.0,
                echo_time=3.6,
                flip_angle=18.0,
                scanning_sequence=("GR",),
                sequence_variant=("SK", "SP", "MTC"),
            ),
            "other",
            "magnetization transfer",
        ),
        (
            h(
                repetition_time=22.0,
                echo_time=3.6,
                flip_angle=18.0,
                scanning_sequence=("GR",),
                sequence_name="*fl3d1r_t70",
            ),
            "other",
            "TOF",
        ),
        # GE says "phase" only in a private element
        (
            h(repetition_time=700.0, echo_time=7.0, flip_angle=45.0, scanning_sequence=("RM",), complex_part="PHASE"),
            "other",
            "phase",
        ),
        # Philips DWI: ScanningSequence SE with a long TE looks T2w; its EPI factor says EPI
        (
            h(repetition_time=4000.0, echo_time=95.0, scanning_sequence=("SE",), manufacturer="Philips", epi_factor=47),
            "other",
            "EPI factor",
        ),
        # Philips B0 map with a flattened protocol name and a useless description
        (
            h(
                repetition_time=10.8,
                echo_time=3.0,
                flip_angle=8.0,
                series_description="ImageMRSERIES",
                protocol_name="WIPB0SENSE",
            ),
            "other",
            "field map",
        ),
        # no SeriesDescription: ProtocolName, then physics
        (h(**T2_TSE, protocol_name="WIP T2W_TSE SENSE"), "T2w", "ProtocolName"),
        (h(**FLAIR), "FLAIR", "fluid-nulled"),
        # enhanced object whose classic codes came out empty: timing alone
        (h(repetition_time=1800.0, echo_time=2.41, inversion_time=900.0), "T1w", "inversion-prepared"),
        # multi-echo 3D GRE for QSM/T2*: first echo times like a T1 FLASH, but six echoes, no preparation
        (
            h(
                repetition_time=35.0,
                echo_time=4.5,
                flip_angle=15.0,
                scanning_sequence=("GR",),
                mr_acquisition_type="3D",
                echo_train_length=6,
            ),
            "other",
            "multi-echo",
        ),
        # GE BOLD and Philips FFE-EPI BOLD
        (
            h(repetition_time=2500.0, echo_time=30.0, flip_angle=75.0, scanning_sequence=("EP", "GR")),
            "other",
            "echo-planar",
        ),
        (h(repetition_time=2000.0, echo_time=30.0, flip_angle=76.0, scanning_sequence=("GR",)), "other", "T2*"),
        # diffusion trace / ADC, perfusion
        (h(**T2_TSE, image_type=("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW")), "other", "diffusion"),
        (h(**T2_TSE, image_type=("ORIGINAL", "PRIMARY", "PERFUSION")), "other", "perfusion"),
        # Philips T1 TFE with no description: physics plus the vendor's sequence name agree
        (
            h(repetition_time=8.1, echo_time=3.7, flip_angle=8.0, scanning_sequence=("GR",), vendor_sequence="T1TFE"),
            "T1w",
            "T1TFE",
        ),
    ],
)
def test_real_world_traps(header: SeriesHeader, label: str, why: str) -> None:
    c = classify_series(header)
    assert c.label == label, c.explanation
    assert why in c.explanation


def test_classify_dataset_is_the_flow_logic(shared_data: Path) -> None:
    """The public single-header entry point gives the curation flow's answer on a real file."""
    import pydicom

    from imaging.classify import classify_dataset

    path = next((shared_data / "dicom" / "siemens_xa30_enhanced_t1" / "In").glob("*.dcm"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert not ds.get("ScanningSequence")  # enhanced MR: no classic codes at the top level
    (s,) = scan_source(path.parent).series
    assert classify_dataset(ds) == classify_series(s.header)
    assert classify_dataset(ds).label == "T1w"


# --------------------------------------------------------------------------------------------------
# Issue 12 error families, on hand-made headers (none of these rows is in the shared CSV)

UTE = {"repetition_time": 4.5, "echo_time": 0.07, "flip_angle": 10.0, "mr_acquisition_type": "3D"}


@pytest.mark.parametrize(
    ("header", "label", "why"),
    [
        # ultra-short / zero TE: proton-density weighted whatever the flip angle
        (h(**UTE, scanning_sequence=("GR",), series_description="3D_brain_sag"), "other", "ultra-short TE"),
        (h(**UTE, scanning_sequence=("RM",), series_description="Sag T1 3D"), "other", "ultra-short TE"),
        (h(**UTE, scanning_sequence=("GR",), sequence_name="*petra3d1"), "other", "ultra-short TE"),
        (h(repetition_time=3.1, echo_time=0.3, flip_angle=7.0, series_description="ZTE_head"), "other", "'zte'"),
        # spoiled GRE under the Ernst angle of white matter: PD, not T1, even without a telling name
        (
            h(repetition_time=30.0, echo_time=4.0, flip_angle=8.0, scanning_sequence=("GR",), sequence_variant=("SP",)),
            "other",
            "Ernst angle",
        ),
        (
            h(
                repetition_time=400.0,
                echo_time=4.6,
                flip_angle=20.0,
                scanning_sequence=("GR",),
                series_description="gre",
            ),
            "other",
            "Ernst angle",
        ),
        # ... while a T1 FLASH flips well above it
        (
            h(
                repetition_time=250.0,
                echo_time=2.5,
                flip_angle=70.0,
                scanning_sequence=("GR",),
                series_description="ax",
            ),
            "T1w",
            "flip angle 70",
        ),
        (
            h(
                repetition_time=20.0,
                echo_time=4.0,
                flip_angle=25.0,
                scanning_sequence=("GR",),
                sequence_variant=("SP",),
            ),
            "T1w",
            "spoiled gradient echo",
        ),
        # a b-value behind a vendor prefix, on spin-echo physics that looks like a T2w
        (h(**T2_TSE, series_description="PU:Ax_b1000"), "other", "diffusion"),
        (h(**T2_TSE, series_description="AxDWIb1000 T2"), "other", "diffusion"),
        (h(**T2_TSE, series_description="isoB800"), "other", "diffusion"),
        (h(**T2_TSE, protocol_name="AX 1000b"), "other", "diffusion"),
        (h(**T2_TSE, series_description="ax eADC"), "other", "diffusion"),
        # no keyword at all: an echo-planar readout bandwidth gives the diffusion series away
        (h(**T2_TSE, series_description="Ax", pixel_bandwidth=1953.0), "other", "echo-planar"),
        (h(**T2_TSE, series_description="Ax T2", pixel_bandwidth=244.0), "T2w", "TE >= 80"),
        # a vendor-corrected (intensity-normalised) reconstruction keeps its physics
        (
            h(**MPRAGE, series_description="PU:Sag T1 BRAVO", image_type=("DERIVED", "PRIMARY", "OTHER")),
            "T1w",
            "'t1' in SeriesDescription",
        ),
        # a task word does not override MPRAGE physics; a BOLD named after its task stays other
        (h(**MPRAGE, series_description="MPRAGE_task-nback_run1"), "T1w", "ruled out by the physics"),
        (h(**MPRAGE, series_description="T1w_rest_session"), "T1w", "ruled out by the physics"),
        (
            h(
                repetition_time=2000.0,
                echo_time=30.0,
                flip_angle=77.0,
                scanning_sequence=("EP",),
                series_description="task-nback",
            ),
            "other",
            "functional",
        ),
        # a field-map magnitude labelled with an fMRI word stays other (T1-like physics, no preparation)
        (
            h(
                repetition_time=500.0,
                echo_time=4.9,
                flip_angle=60.0,
                scanning_sequence=("GR",),
                series_description="fmri_fieldmap",
            ),
            "other",
            "'fmri'",
        ),
    ],
)
def test_issue12_families(header: SeriesHeader, label: str, why: str) -> None:
    c = classify_series(header)
    assert c.label == label, c.explanation
    assert why in c.explanation, c.explanation


def test_task_word_alone_against_mprage_physics_goes_to_review() -> None:
    backed = classify_series(h(**MPRAGE, series_description="MPRAGE_task-nback_run1"))
    alone = classify_series(h(**MPRAGE, series_description="task_rest_session"))
    assert backed.label == alone.label == "T1w"
    assert not backed.needs_review and alone.needs_review  # physics vs the only keyword: a human checks
    assert alone.confidence < backed.confidence


def test_inversion_prepared_ute_is_t1w_only_for_review() -> None:
    c = classify_series(h(**UTE, inversion_time=700.0, scanning_sequence=("GR", "IR")))
    assert c.label == "T1w" and c.needs_review and c.confidence < 0.65


def test_vendor_corrected_reconstruction_is_not_rejected_as_derived() -> None:
    from imaging.dicom import series_rejection

    def reason(**kw: object) -> str | None:
        return series_rejection(h(**MPRAGE, **kw), n_instances=176, n_frames=176, has_geometry=True)[0]

    assert reason(image_type=("DERIVED", "PRIMARY", "OTHER"), series_description="PU:Sag T1 BRAVO") is None
    assert reason(image_type=("DERIVED", "PRIMARY", "M", "ND", "NORM", "DIS3D")) is None
    assert reason(image_type=("DERIVED", "SECONDARY", "REFORMATTED")) == "derived"
    assert reason(image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")) == "derived"
    assert reason(image_type=("DERIVED", "PRIMARY", "SUB")) == "derived"
    assert reason(image_type=("DERIVED",)) == "derived"


def test_confidence_orders_the_evidence_and_is_never_certain() -> None:
    agree = classify_series(h(**T2_TSE, series_description="T2_TSE_tra"))
    physics_only = classify_series(h(**T2_TSE))
    keyword_only = classify_series(h(series_description="t2_tse_tra"))
    clash = classify_series(h(**T2_TSE, series_description="T1_sag"))
    thin = classify_series(h(repetition_time=5000.0, echo_time=102.0))
    assert agree.confidence > physics_only.confidence > keyword_only.confidence > clash.confidence
    assert max(c.confidence for c in (agree, physics_only, keyword_only)) < 1.0
    assert not agree.needs_review and not physics_only.needs_review
    assert clash.needs_review and thin.needs_review


def test_reliability_table_and_ece(bench: ModuleType) -> None:
    pairs = [("T1w", "T1w")] * 3 + [("T2w", "T1w")] + [("FLAIR", "FLAIR")] * 2
    confidences = [0.9, 0.9, 0.9, 0.9, 0.55, 0.55]
    rows, ece = bench.reliability(pairs, confidences)
    assert [(r["n"], r["accuracy"]) for r in rows] == [(2, 1.0), (4, 0.75)]
    assert ece == pytest.approx(2 / 6 * 0.45 + 4 / 6 * 0.15)


def test_dev_csv_calibration(bench: ModuleType, dev_rows: list[dict[str, str]]) -> None:
    """On the labelled rows: small calibration error, no confident error, a review queue a person can
    work through. (The dev rows are easier than a hospital's: the confidences stay below their
    accuracy here on purpose, see imaging.classify.)"""
    scored = bench.score(dev_rows)
    pairs = bench.relabelled(scored)
    confidences = [s.result.confidence for s in scored]
    _, ece = bench.reliability(pairs, confidences)
    assert ece < 0.06, ece
    confident_errors = [s for s, (t, p) in zip(scored, pairs, strict=True) if t != p and s.result.confidence >= 0.9]
    assert not confident_errors, [s.result.explanation for s in confident_errors]
    assert sum(s.result.needs_review for s in scored) <= 0.05 * len(scored)
    assert max(confidences) < 1.0


def test_a_derived_rejection_against_confident_physics_is_not_reported_as_certain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import imaging.classify as classify
    from imaging.dicom import ScanResult, SeriesRecord

    def record(uid: str, header: SeriesHeader, rejection: str) -> SeriesRecord:
        return SeriesRecord(uid, "1.2", "p", (), "", header, 176, rejection, "ImageType/description rule")

    scan = ScanResult(
        series=(
            record("1.2.1", h(**MPRAGE, series_description="t1_mprage_sag FA 9"), "derived"),
            record("1.2.2", h(**T2_TSE, series_description="ep2d_diff_ADC"), "derived"),
            record("1.2.3", h(**MPRAGE, series_description="t1_mprage_sag"), "too_few_slices"),
        ),
        rejected_files=(),
        n_files=0,
        seconds=0.0,
    )
    monkeypatch.setattr(classify, "scan_source", lambda *a, **k: scan)
    rows = {r.series_instance_uid: r for r in classify.classify_source(tmp_path)}
    assert all(r.label == "other" for r in rows.values())
    doubtful = rows["1.2.1"]
    assert doubtful.needs_review and doubtful.confidence < 0.5 and "would say T1w" in doubtful.explanation
    assert not rows["1.2.2"].needs_review and rows["1.2.2"].confidence == 0.99
    assert not rows["1.2.3"].needs_review and rows["1.2.3"].confidence == 0.99  # a fact, not a judgement
