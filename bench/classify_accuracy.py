"""Benchmark: series-classifier accuracy on the labelled dev CSV (../shared/data/series_metadata_dev.csv).

Each row is a BIDS sidecar of a real OpenNeuro series (12 datasets, Siemens/GE/Philips). It is turned
back into the DICOM header the scanner would have written: a real pydicom Dataset with times in ms,
multi-valued code strings, ImageType, vendor names as scanners spell them, and GE's pulse-sequence
name in GE's private element. The header then goes through the classifier's public entry point,
`imaging.classify.classify_dataset`, the same normalisation and rules the curation flow applies.

The label columns (`label`, `bids_suffix`, `datatype`, `acq`, `TaskName`, the dataset and subject
names) never reach the header: they are the answer.

Prints accuracy, per-class precision/recall/F1, the confusion matrix and every misclassified row.
A second block scores the rows whose CSV label disagrees with what the acquisition physically is
(`LABEL_NOTES`), so that number is never mixed into the first one.

Calibration: a reliability table (confidence bins: series, mean confidence, accuracy), the
expected calibration error (ECE: series-weighted mean |accuracy - confidence| over the bins) and the
Brier score of the confidence as a forecast of "the label is right", for both labellings. Baseline in
the same run: the same labels reported with confidence 1.0 (a classifier that is always sure); the
ratio of Brier scores says how much the confidences improve on that.

Usage:
    .venv/bin/python bench/classify_accuracy.py [--csv PATH] [--max-rows-shown 50]
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from imaging.classify import LABELS, Classification, classify_dataset

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "series_metadata_dev.csv"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

# Defined terms (DICOM PS3.3 C.8.3.1): a scanner writes only these in the two sequence attributes.
# Old dcm2niix sidecars joined multi-values with "_" ("GR_IR", "SK_SP_MP"); one CSV has a sequence
# name in the SequenceVariant column. Only known terms are split out and kept.
SCANNING_SEQUENCE_TERMS = {"SE", "IR", "GR", "EP", "RM"}
SEQUENCE_VARIANT_TERMS = {"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"}
SCAN_OPTION_TERMS = {"PER", "RG", "CG", "PPG", "FC", "PFF", "PFP", "SP", "FS", "IR", "WE", "SAT1", "SAT2", "SAT3", "MT"}
# How scanners spell the vendor (dcm2niix shortens it in sidecars).
MANUFACTURER = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}


@dataclass(frozen=True)
class LabelNote:
    """A group of rows whose CSV label disagrees with the physics of the acquisition."""

    dataset: str
    series_description: str
    csv_label: str
    physical_label: str
    why: str


# ds000201 files its GE "Sag CUBE T2 flair" under the BIDS suffix T2w. The header says inversion
# recovery (SE\IR) with TI 1.86 s, TR 6 s and TE 126 ms: the CSF-nulling inversion of a T2-FLAIR
# (3D CUBE/SPACE/VISTA FLAIRs null CSF at TI 1.6-1.9 s because their long echo trains shorten the
# effective TR). Other 3D FLAIRs in this same CSV (Philips TI 1.65 s, Siemens SPACE TI 1.8 s) are
# labelled FLAIR, so no rule that calls this one T2w could be right for them too.
LABEL_NOTES = (
    LabelNote(
        "ds000201",
        "Sag CUBE T2 flair",
        "T2w",
        "FLAIR",
        "SE\\IR, TI 1.86 s, TE 126 ms: a CSF-nulled 3D T2-FLAIR (the dataset's BIDS suffix says T2w)",
    ),
)


def _ms(value: str) -> str | None:
    """A BIDS time (seconds) as the DICOM DS string in milliseconds, or None when empty."""
    try:
        ms = float(value) * 1000.0
    except ValueError:
        return None
    return f"{ms:.10g}"[:16]


def _number(value: str) -> str | None:
    try:
        return f"{float(value):.10g}"[:16]
    except ValueError:
        return None


def _split(value: str, terms: set[str] | None, keep_unknown: bool) -> list[str]:
    """A list field of the CSV as DICOM values: `\\` (or `/`) separated; `_` only between known terms."""
    value = value.strip()
    if not value:
        return []
    sep = "\\" if "\\" in value else "/" if "/" in value else None
    parts = [p.strip().upper() for p in (value.split(sep) if sep else [value]) if p.strip()]
    out: list[str] = []
    for part in parts:
        pieces = part.split("_")
        if terms is not None and len(pieces) > 1 and all(p in terms for p in pieces):
            out.extend(pieces)
        elif terms is None or keep_unknown or part in terms:
            out.append(part)
    return out


def dataset_from_row(row: dict[str, str]) -> Dataset:
    """The DICOM header a scanner would have written for this sidecar row (no label columns used)."""
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.Modality = row.get("Modality") or "MR"
    vendor = row.get("Manufacturer", "").strip()
    ds.Manufacturer = MANUFACTURER.get(vendor.lower(), vendor)
    ds.ManufacturerModelName = row.get("ManufacturersModelName", "")
    ds.SeriesDescription = row.get("SeriesDescription", "")
    ds.ProtocolName = row.get("ProtocolName", "")
    for keyword, column in (("RepetitionTime", "RepetitionTime"), ("EchoTime", "EchoTime")):
        value = _ms(row.get(column, ""))
        if value is not None:
            setattr(ds, keyword, value)
    ti = _ms(row.get("InversionTime", ""))
    if ti is not None:
        ds.InversionTime = ti
    for keyword, column in (
        ("FlipAngle", "FlipAngle"),
        ("MagneticFieldStrength", "MagneticFieldStrength"),
        ("SliceThickness", "SliceThickness"),
        ("SpacingBetweenSlices", "SpacingBetweenSlices"),
        ("PixelBandwidth", "PixelBandwidth"),
    ):
        value = _number(row.get(column, ""))
        if value is not None:
            setattr(ds, keyword, value)
    for keyword, column in (
        ("SeriesNumber", "SeriesNumber"),
        ("EchoNumbers", "EchoNumber"),
        ("EchoTrainLength", "EchoTrainLength"),
    ):
        value = _number(row.get(column, ""))
        if value is not None:
            setattr(ds, keyword, str(int(float(value))))
    ds.ScanningSequence = _split(row.get("ScanningSequence", ""), SCANNING_SEQUENCE_TERMS, keep_unknown=False)
    ds.SequenceVariant = _split(row.get("SequenceVariant", ""), SEQUENCE_VARIANT_TERMS, keep_unknown=False)
    ds.ScanOptions = _split(row.get("ScanOptions", ""), SCAN_OPTION_TERMS, keep_unknown=True)
    ds.MRAcquisitionType = row.get("MRAcquisitionType", "").upper()
    # ImageType is Type 1: a scanner always writes at least ORIGINAL\PRIMARY for an acquired image.
    ds.ImageType = _split(row.get("ImageType", ""), None, keep_unknown=True) or ["ORIGINAL", "PRIMARY"]
    name = row.get("SequenceName", "").strip()
    if name.startswith("_"):  # old dcm2niix wrote Siemens' leading "*" as "_"
        name = "*" + name[1:]
    if name:
        ds.SequenceName = name
    pulse = row.get("PulseSequenceName", "").strip()
    if pulse:
        if ds.Manufacturer.startswith("GE"):  # GE keeps it in its private acquisition group
            ds.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0x9C, "LO", pulse)
        else:
            ds.PulseSequenceName = pulse
    iop = _split(row.get("ImageOrientationPatientDICOM", ""), None, keep_unknown=True)
    if len(iop) == 6:
        ds.ImageOrientationPatient = iop
    return ds


@dataclass(frozen=True)
class Scored:
    row: dict[str, str]
    truth: str
    result: Classification


def score(rows: Sequence[dict[str, str]]) -> list[Scored]:
    """Classify every row through the public entry point."""
    return [Scored(row, row["label"], classify_dataset(dataset_from_row(row))) for row in rows]


def metrics(pairs: Sequence[tuple[str, str]]) -> dict[str, object]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix of (truth, predicted)."""
    confusion = Counter(pairs)
    n = len(pairs)
    per_class = {}
    for label in LABELS:
        tp = confusion[(label, label)]
        predicted = sum(v for (_, p), v in confusion.items() if p == label)
        actual = sum(v for (t, _), v in confusion.items() if t == label)
        precision = tp / predicted if predicted else float("nan")
        recall = tp / actual if actual else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if predicted and actual and tp else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    accuracy = sum(v for (t, p), v in confusion.items() if t == p) / n if n else float("nan")
    return {"n": n, "accuracy": accuracy, "per_class": per_class, "confusion": confusion}


def relabelled(scored: Sequence[Scored]) -> list[tuple[str, str]]:
    """(truth, predicted) with the `LABEL_NOTES` rows given their physical label."""
    out = []
    for s in scored:
        truth = s.truth
        for note in LABEL_NOTES:
            if (
                s.row.get("dataset") == note.dataset
                and s.row.get("SeriesDescription") == note.series_description
                and truth == note.csv_label
            ):
                truth = note.physical_label
        out.append((truth, s.result.label))
    return out


def _print_metrics(title: str, m: dict[str, object]) -> None:
    print(f"\n{title}")
    print(f"  accuracy {m['accuracy']:.4f} on {m['n']} series")
    print(f"  {'class':<6} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for label, v in m["per_class"].items():  # type: ignore[union-attr]
        print(f"  {label:<6} {v['precision']:>9.3f} {v['recall']:>7.3f} {v['f1']:>6.3f} {v['support']:>8}")
    confusion = m["confusion"]
    print("  confusion (rows: CSV label, columns: predicted)")
    print("  " + " " * 7 + "".join(f"{p:>7}" for p in LABELS))
    for t in LABELS:
        print(f"  {t:<7}" + "".join(f"{confusion[(t, p)]:>7}" for p in LABELS))  # type: ignore[index]


CONFIDENCE_BINS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001)


def reliability(pairs: Sequence[tuple[str, str]], confidences: Sequence[float]) -> tuple[list[dict], float]:
    """Per confidence bin: series, mean confidence, accuracy; and the expected calibration error."""
    rows, ece, n = [], 0.0, len(pairs)
    for lo, hi in zip(CONFIDENCE_BINS[:-1], CONFIDENCE_BINS[1:], strict=True):
        idx = [i for i, c in enumerate(confidences) if lo <= c < hi]
        if not idx:
            continue
        conf = sum(confidences[i] for i in idx) / len(idx)
        acc = sum(1 for i in idx if pairs[i][0] == pairs[i][1]) / len(idx)
        rows.append({"bin": f"[{lo:.2f}, {min(hi, 1.0):.2f}]", "n": len(idx), "confidence": conf, "accuracy": acc})
        ece += len(idx) / n * abs(acc - conf)
    return rows, ece


def brier(pairs: Sequence[tuple[str, str]], confidences: Sequence[float]) -> float:
    """Mean squared error of the confidence as the probability that the label is right."""
    n = len(pairs)
    return sum((c - (t == p)) ** 2 for (t, p), c in zip(pairs, confidences, strict=True)) / n if n else float("nan")


def _print_reliability(title: str, pairs: Sequence[tuple[str, str]], scored: Sequence[Scored]) -> float:
    rows, ece = reliability(pairs, [s.result.confidence for s in scored])
    print(f"\n{title}")
    print(f"  {'confidence':<14} {'series':>6} {'mean conf':>9} {'accuracy':>8} {'gap':>7}")
    for r in rows:
        gap = r["accuracy"] - r["confidence"]
        print(f"  {r['bin']:<14} {r['n']:>6} {r['confidence']:>9.3f} {r['accuracy']:>8.3f} {gap:>+7.3f}")
    wrong = [s for s, (t, p) in zip(scored, pairs, strict=True) if t != p]
    caught = sum(1 for s in wrong if s.result.needs_review)
    review = sum(1 for s in scored if s.result.needs_review)
    top = sum(1 for s in wrong if s.result.confidence >= 0.95)
    print(f"  expected calibration error (ECE) {ece:.4f}")
    print(
        f"  review: {review} of {len(scored)} series ({review / len(scored):.1%}); errors {len(wrong)}, "
        f"{caught} of them in review, {top} with confidence >= 0.95"
    )
    return ece


def _error_key(s) -> tuple:
    """How misclassified rows are grouped in the report: dataset, suffix, description, truth, prediction."""
    return (
        s.row.get("dataset", ""),
        s.row.get("bids_suffix", ""),
        s.row.get("SeriesDescription", "") or s.row.get("ProtocolName", ""),
        s.truth,
        s.result.label,
        s.result.needs_review,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="labelled CSV (default: the shared dev CSV)")
    ap.add_argument("--max-rows-shown", type=int, default=60, help="misclassified rows to print (grouped)")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        raise SystemExit(f"no CSV at {args.csv}; pass --csv PATH (see ../shared/data/README.md)")
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    scored = score(rows)
    main_metrics = metrics([(s.truth, s.result.label) for s in scored])
    _print_metrics(f"Classifier on {args.csv.name} (labels as given)", main_metrics)
    wrong = [s for s in scored if s.truth != s.result.label]
    flagged = sum(1 for s in wrong if s.result.needs_review)
    review_total = sum(1 for s in scored if s.result.needs_review)
    print(f"  sent to review: {review_total} series; of the {len(wrong)} errors, {flagged} are among them")
    groups = Counter(_error_key(s) for s in wrong)
    print(f"\nMisclassified rows ({len(wrong)}), grouped: count dataset suffix description: truth -> predicted")
    example = {}
    for s in wrong:
        example.setdefault(_error_key(s), s.result.explanation)
    for (ds_name, suffix, desc, truth, pred, review), count in groups.most_common(args.max_rows_shown):
        flag = " [review]" if review else ""
        print(f"  {count:>4} {ds_name} {suffix} {desc!r}: {truth} -> {pred}{flag}")
        print(f"       {example[(ds_name, suffix, desc, truth, pred, review)]}")
    print("\nLabel notes (CSV label vs the physics of the acquisition):")
    for note in LABEL_NOTES:
        n = sum(
            1
            for s in scored
            if s.row.get("dataset") == note.dataset and s.row.get("SeriesDescription") == note.series_description
        )
        print(
            f"  {n} rows {note.dataset} {note.series_description!r}: CSV {note.csv_label}, physically "
            f"{note.physical_label}: {note.why}"
        )
    _print_metrics("Same run, the noted rows scored with their physical label", metrics(relabelled(scored)))
    given = [(s.truth, s.result.label) for s in scored]
    ece_given = _print_reliability("Reliability (labels as given)", given, scored)
    ece_noted = _print_reliability("Reliability (noted rows with their physical label)", relabelled(scored), scored)
    for title, pairs in (("as given", given), ("physical labels", relabelled(scored))):
        ours = brier(pairs, [s.result.confidence for s in scored])
        sure = brier(pairs, [1.0] * len(scored))
        ratio = f"{ours / sure:.3f}" if sure else "n/a (no errors)"
        print(f"\nBrier ({title}): {ours:.4f}; always-sure baseline {sure:.4f}; ratio {ratio}")
    print(f"ECE: {ece_given:.4f} (as given), {ece_noted:.4f} (physical labels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
