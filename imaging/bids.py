"""BIDS input: the anatomical NIfTI of a BIDS dataset as series records, and why a source has no input.

A research dataset (and many hospital archives) arrives already converted: NIfTI in BIDS layout,
with the scanner's physics in JSON sidecars. Curation treats each `anat` T1w/T2w/FLAIR file as one
series: the NIfTI is the converted image, the sidecar gives a `SeriesHeader` (times in seconds in
BIDS, milliseconds in the header), and the BIDS suffix is a claim that the classifier checks against
that physics (`check_suffix`), like a SeriesDescription keyword. The subject/session labels are only
ever handed to the keyed pseudonymiser (`imaging.deid`) by the caller, never persisted.

Pure file code (nibabel, json): no warehouse, no Prefect.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path
from typing import Any

from imaging.classify import Classification, SeriesRow, classify_series
from imaging.dicom.header import SeriesHeader
from imaging.dicom.reader import RejectedFile
from imaging.dicom.reasons import MIN_SLICES
from imaging.dicom.scan import ScanResult, SeriesRecord

BIDS_SUFFIXES = ("T1w", "T2w", "FLAIR")
"""Anatomical suffixes curated (the corpus' sequence classes); other anat files are left alone."""
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
DESCRIPTION = "dataset_description.json"
_NAME = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*_(?P<suffix>[A-Za-z0-9]+)$"
)


class NoInputError(ValueError):
    """The source holds nothing curation can read (no DICOM series, no BIDS anatomical NIfTI)."""


@dataclass(frozen=True)
class BidsRecord(SeriesRecord):
    """One BIDS anatomical file as a series: a `SeriesRecord` plus its BIDS suffix and dataset path.

    The "UIDs" are namespaced BIDS labels (dataset name, sub, ses, file name): raw identifiers for the
    pseudonymiser only, never persisted. `files` holds the NIfTI alone; `sop_hash` changes when the
    image or its sidecar does, so an edited file is curated again.
    """

    _: KW_ONLY
    suffix: str
    relpath: str = ""


def is_bids_dataset(source: Path) -> bool:
    """BIDS requires dataset_description.json at the top of the dataset."""
    return Path(source).is_dir() and (Path(source) / DESCRIPTION).is_file()


def _nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_EXTENSIONS)


def _stem(name: str) -> str:
    for ext in NIFTI_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _anat_files(root: Path) -> list[Path]:
    """sub-*/anat/*.nii[.gz] and sub-*/ses-*/anat/*.nii[.gz]; derivatives/ and sourcedata/ are not raw data."""
    out: list[Path] = []
    for sub in sorted(root.glob("sub-*")):
        if not sub.is_dir():
            continue
        for anat in [sub / "anat", *sorted(s / "anat" for s in sub.glob("ses-*") if s.is_dir())]:
            if anat.is_dir():
                out.extend(sorted(f for f in anat.iterdir() if f.is_file() and _nifti(f.name)))
    return out


def _ms(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v * 1000.0 if math.isfinite(v) else None


def _codes(value: Any) -> tuple[str, ...]:
    """A DICOM code string from a sidecar: a list, or one string joined with "\\" or dcm2niix's "_"."""
    items = value if isinstance(value, list) else re.split(r"[\\_,\s]+", str(value or ""))
    return tuple(str(x).strip().upper() for x in items if str(x).strip())


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def header_from_sidecar(meta: dict[str, Any], shape: tuple[int, ...], zooms: tuple[float, ...]) -> SeriesHeader:
    """The `SeriesHeader` the scanner's DICOM would have given, from a BIDS sidecar (seconds -> ms).

    Without a SeriesDescription or ProtocolName nothing in the header names the sequence; the caller's
    suffix is then the only word, checked against the physics in `check_suffix`.
    """
    ti = _ms(meta.get("InversionTime"))
    etl, number = _num(meta.get("EchoTrainLength")), _num(meta.get("SeriesNumber"))
    return SeriesHeader(
        modality=str(meta.get("Modality") or "MR"),
        sop_class_uid="",
        manufacturer=str(meta.get("Manufacturer") or ""),
        model_name=str(meta.get("ManufacturersModelName") or ""),
        field_strength=_num(meta.get("MagneticFieldStrength")),
        series_description=str(meta.get("SeriesDescription") or ""),
        protocol_name=str(meta.get("ProtocolName") or ""),
        sequence_name=str(meta.get("SequenceName") or ""),
        repetition_time=_ms(meta.get("RepetitionTime")),
        echo_time=_ms(meta.get("EchoTime")),
        inversion_time=ti if ti else None,
        flip_angle=_num(meta.get("FlipAngle")),
        scanning_sequence=_codes(meta.get("ScanningSequence")),
        sequence_variant=_codes(meta.get("SequenceVariant")),
        scan_options=_codes(meta.get("ScanOptions")),
        mr_acquisition_type=str(meta.get("MRAcquisitionType") or "").upper(),
        image_type=_codes(meta.get("ImageType")) or ("ORIGINAL", "PRIMARY"),
        contrast_agent=str(meta.get("ContrastBolusIngredient") or ""),
        rows=int(shape[0]) if shape else 0,
        columns=int(shape[1]) if len(shape) > 1 else 0,
        pixel_spacing=(float(zooms[0]), float(zooms[1])) if len(zooms) > 1 else None,
        slice_thickness=_num(meta.get("SliceThickness")) or (float(zooms[2]) if len(zooms) > 2 else None),
        series_number=int(number) if number is not None else None,
        study_date="",
        vendor_sequence=str(meta.get("PulseSequenceName") or meta.get("PulseSequenceDetails") or ""),
        echo_train_length=int(etl) if etl is not None else None,
        pixel_bandwidth=_num(meta.get("PixelBandwidth")),
    )


def _sidecar(root: Path, nifti: Path, suffix: str) -> tuple[dict[str, Any], bytes]:
    """The merged sidecar (BIDS inheritance, top-level `<suffix>.json` first, the file's own last)."""
    meta: dict[str, Any] = {}
    raw = b""
    for path in (root / f"{suffix}.json", nifti.with_name(_stem(nifti.name) + ".json")):
        if path.is_file():
            data = path.read_bytes()
            raw += data
            try:
                loaded = json.loads(data)
            except ValueError as err:
                raise ValueError(f"sidecar {path.name} is not valid JSON ({err}); fix or remove it") from err
            if isinstance(loaded, dict):
                meta.update(loaded)
    return meta, raw


def _dataset_name(root: Path) -> str:
    try:
        desc = json.loads((root / DESCRIPTION).read_text())
    except (OSError, ValueError):
        return ""
    return str(desc.get("Name", "")) if isinstance(desc, dict) else ""


def scan_bids(source: Path) -> ScanResult:
    """Every anat T1w/T2w/FLAIR NIfTI of a BIDS dataset as a series record (headers only, no pixels).

    Two datasets with a "sub-01" each are different people: the raw ids are namespaced by the dataset's
    Name before pseudonymisation. A 4D image or one with fewer than `MIN_SLICES` slices is rejected with
    the DICOM scan's reason codes; an unreadable file or sidecar is a rejected file.
    """
    import nibabel as nib

    t0 = time.perf_counter()
    root = Path(source)
    dataset = _dataset_name(root)
    records: list[BidsRecord] = []
    rejected: list[RejectedFile] = []
    files = _anat_files(root)
    for f in files:
        m = _NAME.match(_stem(f.name))
        if not m or m["suffix"] not in BIDS_SUFFIXES:
            continue
        sub, ses, suffix = m["sub"], m["ses"] or "", m["suffix"]
        try:
            meta, raw = _sidecar(root, f, suffix)
            img = nib.load(str(f))
            shape, zooms = tuple(int(x) for x in img.shape), tuple(float(x) for x in img.header.get_zooms())
            digest = hashlib.sha256(f.read_bytes() + b"\0" + raw).hexdigest()
        except Exception as err:  # noqa: BLE001 - a broken file is reported, the rest goes on
            rejected.append(RejectedFile(f, "unreadable", f"{type(err).__name__}: {str(err)[:200]}"))
            continue
        rejection, detail = None, ""
        n_volumes = shape[3] if len(shape) > 3 else 1
        if len(shape) < 3 or n_volumes > 1 or any(n > 1 for n in shape[4:]):
            rejection, detail = "inconsistent_geometry", f"NIfTI of shape {shape}: one 3D volume is needed"
        elif shape[2] < MIN_SLICES:
            rejection, detail = "too_few_slices", f"{shape[2]} slices (< {MIN_SLICES})"
        rel = f.relative_to(root).as_posix()
        records.append(
            BidsRecord(
                series_uid=f"bids:{dataset}:{_stem(rel)}",
                study_uid=f"bids:{dataset}:sub-{sub}:ses-{ses}",
                patient_id=f"bids:{dataset}:sub-{sub}",
                files=(f,),
                sop_hash=digest,
                header=header_from_sidecar(meta, shape, zooms),
                n_instances=1,
                rejection=rejection,
                rejection_detail=detail,
                suffix=suffix,
                relpath=rel,
                n_slices=shape[2] if len(shape) > 2 else 0,
                n_volumes=n_volumes,
            )
        )
    return ScanResult(
        series=tuple(records),
        rejected_files=tuple(rejected),
        n_files=len(files),
        seconds=time.perf_counter() - t0,
        n_read=len(files),
    )


def check_suffix(c: Classification, suffix: str) -> Classification:
    """The classification, sent to review when the sidecar physics does not say what the suffix says.

    A suffix is a person's filing decision (ds000201 files a 3D T2-FLAIR under T2w); the physics is the
    scanner's. Agreement keeps the classifier's verdict; disagreement keeps its label and holds the file
    for a reviewer, as a DICOM series whose keywords and physics disagree.
    """
    if c.label == suffix:
        return c
    return replace(
        c,
        needs_review=True,
        explanation=f"BIDS suffix {suffix} disagrees with the sidecar: {c.explanation}",
    )


def classify_bids_record(rec: BidsRecord) -> Classification:
    """The suffix stands in for a description when the sidecar names no sequence (keyword evidence)."""
    h = rec.header
    if not (h.series_description or h.protocol_name):
        h = replace(h, series_description=rec.suffix)
    return check_suffix(classify_series(h), rec.suffix)


def classify_bids(source: Path) -> list[SeriesRow]:
    """`mrifoundry classify` rows of a BIDS dataset; the "UID" column holds the file's path in the dataset."""
    rows = []
    for rec in scan_bids(Path(source)).series:
        assert isinstance(rec, BidsRecord)
        h = rec.header
        desc = h.series_description or h.protocol_name or rec.suffix
        if rec.rejection:
            why = f"other because ingest rejected the file: {rec.rejection} ({rec.rejection_detail})"
            rows.append(SeriesRow(rec.relpath, h.series_number, desc, "other", False, 0.99, False, why, rec.rejection))
            continue
        c = classify_bids_record(rec)
        rows.append(
            SeriesRow(
                rec.relpath, h.series_number, desc, c.label, c.contrast_enhanced, c.confidence, c.needs_review,
                c.explanation, "",
            )
        )  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------
# Sources with nothing to read


_NOT_DICOM_EXT = (*NIFTI_EXTENSIONS, ".json", ".tsv", ".txt", ".md", ".csv", ".bval", ".bvec", ".mgz", ".png", ".jpg")


def _iter_names(source: Path) -> Iterator[str]:
    """File names under `source`, lazily (a big export's first DICOM-like name ends the quick check)."""
    if source.is_file():
        yield source.name
        return
    for _, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (f for f in files if not f.startswith("."))


def _walk(source: Path) -> list[str]:
    return list(_iter_names(source))


def no_input_message(source: Path) -> str:
    """One line saying why `source` holds nothing to curate, and what to do about it."""
    source = Path(source)
    names = _walk(source)
    n_nifti = sum(_nifti(n) for n in names)
    if is_bids_dataset(source):
        return (
            f"BIDS dataset {source} has no anatomical T1w/T2w/FLAIR NIfTI "
            "(expected sub-<label>/[ses-<label>/]anat/sub-<label>_..._T1w.nii.gz)"
        )
    if n_nifti:
        return (
            f"{source} holds {n_nifti} NIfTI file(s) but no BIDS layout: NIfTI is read only from a BIDS dataset "
            f"({DESCRIPTION} at the top, sub-<label>/[ses-<label>/]anat/sub-<label>_..._T1w.nii.gz with a JSON "
            "sidecar); arrange it so, or pass the DICOM export"
        )
    if not names:
        return f"{source} has no files: pass a DICOM export folder or a BIDS dataset"
    return (
        f"{source} has no readable input: none of its {len(names)} file(s) is a DICOM MR image and it is not "
        f"a BIDS dataset ({DESCRIPTION} missing)"
    )


def quick_input_problem(source: Path) -> str | None:
    """Before any header is read: a message when the file names alone show there is nothing to read.

    Nothing is decided for a folder with any file that could be DICOM (DICOM files may have any name);
    the scan then decides (`no_input_message` once it found no series).
    """
    source = Path(source)
    if is_bids_dataset(source) and _anat_files(source):
        return None
    if any(not n.lower().endswith(_NOT_DICOM_EXT) for n in _iter_names(source)):
        return None
    return no_input_message(source)


def nifti_as_native(src: Path, out: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Write a BIDS image as the series' native volume: RAS-canonical 3D, float32, atomically.

    The same orientation convention as `imaging.convert` writes for DICOM, so registration and QC see
    no difference between the two inputs. Returns (shape, spacing in mm).
    """
    import nibabel as nib
    import numpy as np

    img = nib.as_closest_canonical(nib.load(str(src)))
    if img.ndim == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if img.ndim != 3:
        raise ValueError(f"{Path(src).name}: shape {img.shape}; one 3D volume is needed")
    data = np.asarray(img.dataobj, dtype=np.float32)  # (X, Y, Z)
    native = nib.Nifti1Image(data, img.affine)
    native.header.set_xyzt_units("mm", "sec")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.nii.gz")
    nib.save(native, str(tmp))
    os.replace(tmp, out)
    return tuple(int(x) for x in data.shape), tuple(float(x) for x in native.header.get_zooms()[:3])
