"""classify_series on real headers, on known traps, and scored on the labelled dev CSV."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from tasks.classify import classify_series
from tasks.ingest import SeriesHeader, scan_source

MIN_ACCURACY = 0.90


def _num(value: str, scale: float = 1.0) -> float | None:
    try:
        return float(value) * scale
    except ValueError:
        return None


def _codes(value: str) -> tuple[str, ...]:
    """A list field of the CSV: `\\`-separated as in DICOM; some converters wrote `_` or `/` instead."""
    value = value.strip()
    if not value:
        return ()
    if "\\" in value:
        parts = value.split("\\")
    elif "/" in value:
        parts = value.split("/")
    elif "_" in value and "GEMS" not in value and len(value) <= 16:
        parts = value.split("_")  # old dcm2niix: "GR_IR", "SK_SP_MP"
    else:
        parts = [value]
    return tuple(p.strip().upper() for p in parts if p.strip())


def header_from_row(row: dict[str, str]) -> SeriesHeader:
    """A SeriesHeader from a BIDS sidecar row: times there are seconds, DICOM (and we) use ms."""
    ti = _num(row["InversionTime"], 1000)
    return SeriesHeader(
        modality=row["Modality"] or "MR",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        manufacturer=row["Manufacturer"],
        model_name=row["ManufacturersModelName"],
        field_strength=_num(row["MagneticFieldStrength"]),
        series_description=row["SeriesDescription"],
        protocol_name=row["ProtocolName"],
        sequence_name=row["SequenceName"] or row["PulseSequenceName"],
        repetition_time=_num(row["RepetitionTime"], 1000),
        echo_time=_num(row["EchoTime"], 1000),
        inversion_time=ti if ti and ti > 0 else None,
        flip_angle=_num(row["FlipAngle"]),
        scanning_sequence=_codes(row["ScanningSequence"]),
        sequence_variant=_codes(row["SequenceVariant"]),
        scan_options=_codes(row["ScanOptions"]),
        mr_acquisition_type=row["MRAcquisitionType"].upper(),
        image_type=_codes(row["ImageType"]),
        contrast_agent="",
        rows=0,
        columns=0,
        pixel_spacing=None,
        slice_thickness=_num(row["SliceThickness"]),
        series_number=_num(row["SeriesNumber"]) and int(float(row["SeriesNumber"])),
        study_date="",
    )


def test_dev_csv_accuracy(shared_data: Path) -> None:
    with open(shared_data / "series_metadata_dev.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 1000
    pairs = [(row["label"], classify_series(header_from_row(row))) for row in rows]
    confusion = Counter((truth, c.label) for truth, c in pairs)
    accuracy = sum(n for (t, p), n in confusion.items() if t == p) / len(rows)
    recall = {}
    for label in ("T1w", "T2w", "FLAIR", "other"):
        total = sum(n for (t, _), n in confusion.items() if t == label)
        recall[label] = confusion[(label, label)] / total
    caught = sum(1 for t, c in pairs if t != c.label and c.needs_review)
    report = (
        f"accuracy {accuracy:.4f} on {len(rows)} series; recall "
        + ", ".join(f"{k} {v:.3f}" for k, v in recall.items())
        + f"; confusion {dict(confusion)}; errors flagged for review: {caught}"
    )
    print(report)
    assert accuracy >= MIN_ACCURACY, report
    assert all(c.explanation.startswith(c.label + " because ") for _, c in pairs)
    assert all(0.0 <= c.confidence <= 1.0 for _, c in pairs)


@pytest.fixture(scope="module")
def philips(philips_flat_gunzipped: Path) -> dict[int | None, SeriesHeader]:
    return {s.header.series_number: s.header for s in scan_source(philips_flat_gunzipped).series}


def test_philips_mprage_with_shot_tr_and_no_ti_is_t1w(philips: dict[int | None, SeriesHeader]) -> None:
    h = philips[1301]
    assert "MPRAGE" in h.series_description and h.inversion_time is None and h.repetition_time < 10
    c = classify_series(h)
    assert c.label == "T1w" and not c.needs_review and c.confidence >= 0.9
    assert "TR=6.501 ms" in c.explanation and "'mprage' in SeriesDescription" in c.explanation
    # the physics alone is enough: a blank description still gives T1w
    blank = classify_series(dataclasses.replace(h, series_description="", protocol_name="ImageMRSERIES"))
    assert blank.label == "T1w"


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
