"""Slice geometry, vendor header styles and the writing of single-frame DICOM files.

Real exports differ by vendor in exactly the places a curation pipeline trips over: series
descriptions, ScanningSequence/SequenceVariant codes, ImageType values, series numbering, signed vs
unsigned pixels and Philips-style RescaleSlope. The protocol tables here reproduce those habits
(from memory of typical headers, not copied from any file) so the classifier and the converters see
the same variety a hospital would send.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage
from pydicom.valuerep import format_number_as_ds

LPS = tuple[float, float, float]
_UID_NAMESPACE = uuid.UUID("5b0d6a4e-2f0c-5c53-9a57-6d72692d7379")


def deterministic_uid(*parts: object) -> UID:
    """A '2.25.<uuid>' UID (ISO/IEC 9834-8) from a name-based UUID of `parts`.

    pydicom's generate_uid(prefix=None, ...) ignores its entropy sources and returns a random UUID,
    so it cannot give reproducible exports; a UUIDv5 of the joined parts can.
    """
    if not parts:
        raise ValueError("deterministic_uid needs at least one part")
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}")


# --------------------------------------------------------------------------------------------------
# Geometry


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if n < 1e-9:
        raise ValueError(f"direction vector {tuple(v)} has zero length")
    return a / n


def _rotation(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Rodrigues rotation matrix about `axis` by `angle_deg`."""
    k = _unit(axis)
    a = math.radians(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * (kx @ kx)


# In-plane directions (row direction, column direction) in DICOM LPS for the standard planes, with
# the axis about which a technologist usually angulates that plane.
_PLANES: dict[str, tuple[LPS, LPS, LPS]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (0.0, 0.0, 1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
}


def plane_directions(plane: str, tilt_deg: float = 0.0) -> tuple[LPS, LPS]:
    """Row and column directions (LPS) of a standard plane angulated by `tilt_deg`.

    Axial and coronal planes tilt about the left-right axis (AC-PC alignment), sagittal about the
    superior-inferior axis (midline alignment).
    """
    try:
        row, col, axis = _PLANES[plane]
    except KeyError:
        raise ValueError(f"unknown plane {plane!r}; known: {', '.join(_PLANES)}") from None
    rot = _rotation(axis, tilt_deg)
    r, c = rot @ np.asarray(row), rot @ np.asarray(col)
    return (float(r[0]), float(r[1]), float(r[2])), (float(c[0]), float(c[1]), float(c[2]))


@dataclass(frozen=True)
class SliceGrid:
    """A stack of parallel slices in scanner (DICOM LPS) space.

    Attributes:
        row_dir: direction of increasing column index (first triplet of ImageOrientationPatient).
        col_dir: direction of increasing row index (second triplet).
        origin: centre of pixel (row 0, column 0) of slice 0 (its ImagePositionPatient).
        pixel_spacing: (distance between rows, distance between columns) in mm, DICOM order.
        slice_spacing: centre-to-centre distance of slices; larger than slice_thickness when the
            protocol leaves a gap.
    """

    row_dir: LPS
    col_dir: LPS
    origin: LPS
    rows: int
    cols: int
    n_slices: int
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    slice_spacing: float

    def __post_init__(self) -> None:
        if min(self.rows, self.cols, self.n_slices) < 1:
            raise ValueError(f"grid needs >= 1 row/col/slice, got {self.rows}x{self.cols}x{self.n_slices}")
        if abs(float(np.dot(self.row_dir, self.col_dir))) > 1e-6:
            raise ValueError(f"row_dir {self.row_dir} and col_dir {self.col_dir} are not orthogonal")

    @classmethod
    def centred(
        cls,
        centre: Sequence[float],
        row_dir: LPS,
        col_dir: LPS,
        shape: tuple[int, int, int],
        pixel_spacing: tuple[float, float],
        slice_thickness: float,
        slice_spacing: float,
    ) -> SliceGrid:
        """Grid of `shape` = (rows, cols, slices) whose centre lies at `centre` (LPS mm)."""
        rows, cols, n = shape
        r, c = _unit(row_dir), _unit(col_dir)
        normal = np.cross(r, c)
        origin = (
            np.asarray(centre, dtype=np.float64)
            - r * (cols - 1) / 2 * pixel_spacing[1]
            - c * (rows - 1) / 2 * pixel_spacing[0]
            - normal * (n - 1) / 2 * slice_spacing
        )
        return cls(
            row_dir=tuple(float(x) for x in r),  # type: ignore[arg-type]
            col_dir=tuple(float(x) for x in c),  # type: ignore[arg-type]
            origin=tuple(float(x) for x in origin),  # type: ignore[arg-type]
            rows=rows,
            cols=cols,
            n_slices=n,
            pixel_spacing=pixel_spacing,
            slice_thickness=slice_thickness,
            slice_spacing=slice_spacing,
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice k."""
        return np.asarray(self.origin) + self.normal * k * self.slice_spacing

    def index_to_lps(self, offset_mm: float = 0.0) -> np.ndarray:
        """4x4 matrix from (slice, row, column) array indices to LPS voxel centres, optionally
        shifted `offset_mm` along the slice normal (to sample across a thick slice)."""
        m = np.eye(4)
        m[:3, 0] = self.normal * self.slice_spacing
        m[:3, 1] = np.asarray(self.col_dir) * self.pixel_spacing[0]
        m[:3, 2] = np.asarray(self.row_dir) * self.pixel_spacing[1]
        m[:3, 3] = np.asarray(self.origin) + self.normal * offset_mm
        return m

    def centre(self) -> np.ndarray:
        """LPS centre of the grid."""
        return (
            np.asarray(self.origin)
            + np.asarray(self.row_dir) * (self.cols - 1) / 2 * self.pixel_spacing[1]
            + np.asarray(self.col_dir) * (self.rows - 1) / 2 * self.pixel_spacing[0]
            + self.normal * (self.n_slices - 1) / 2 * self.slice_spacing
        )


# --------------------------------------------------------------------------------------------------
# Vendor habits


@dataclass(frozen=True)
class Protocol:
    """One series of a vendor's routine brain protocol, with what the pipeline should make of it.

    Attributes:
        role: localizer, T1w, T2w, FLAIR, DWI, ADC or screenshot (what the exporter renders).
        plane: sagittal, axial, 3-plane (one slice per orientation) or none (screenshot).
        expected_label: T1w, T2w, FLAIR or other: the right answer for a sequence classifier.
        expected_rejection: the header-level rejection code the ingest step should give
            (localizer, derived) or None when the series must reach classification.
    """

    role: str
    series_description: str
    protocol_name: str
    sequence_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    acquisition_type: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    flip_angle: float
    echo_train_length: int
    image_type: tuple[str, ...]
    plane: str
    phase_encoding: str
    series_number: int
    expected_label: str
    expected_rejection: str | None
    b_value: float | None = None
    pixel_bandwidth: float = 200.0


@dataclass(frozen=True)
class Storage:
    """How a vendor stores pixels: signedness, bits, and whether it uses a real-world RescaleSlope."""

    signed: bool
    bits_stored: int
    rescale: bool


@dataclass(frozen=True)
class Vendor:
    """A scanner make/model and its routine brain protocol."""

    key: str
    manufacturer: str
    model: str
    software_versions: tuple[str, ...]
    field_strength: float
    receive_coil: str
    study_description: str
    storage: Storage
    protocols: tuple[Protocol, ...]

    @property
    def imaging_frequency(self) -> float:
        return round(42.576 * self.field_strength, 6)


# Protocol fields in order: role, SeriesDescription, ProtocolName, SequenceName, ScanningSequence,
# SequenceVariant, ScanOptions, MRAcquisitionType, TR, TE, TI, FlipAngle, EchoTrainLength, ImageType,
# plane, InPlanePhaseEncodingDirection, SeriesNumber, expected label, expected rejection.
_ORIG_SIEMENS = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")

# fmt: off
SIEMENS = Vendor(
    key="siemens",
    manufacturer="SIEMENS",
    model="Prisma_fit",
    software_versions=("syngo MR E11",),
    field_strength=3.0,
    receive_coil="HeadNeck_20",
    study_description="Head^Routine",
    storage=Storage(signed=False, bits_stored=12, rescale=False),
    protocols=(
        Protocol("localizer", "localizer", "localizer", "*fl2d1", ("GR",), ("SP", "OSP"), (), "2D",
                 8.6, 4.0, None, 20.0, 1, _ORIG_SIEMENS, "3-plane", "ROW", 1, "other", "localizer"),
        Protocol("T1w", "t1_mprage_sag_p2_iso", "t1_mprage_sag_p2_iso", "*tfl3d1_16ns", ("GR", "IR"),
                 ("SK", "SP", "MP"), ("IR",), "3D", 2300.0, 2.98, 900.0, 9.0, 1, _ORIG_SIEMENS,
                 "sagittal", "ROW", 2, "T1w", None, pixel_bandwidth=240.0),
        Protocol("T2w", "t2_tse_tra", "t2_tse_tra", "*tse2d1_15", ("SE",), ("SK", "SP", "OSP"), ("PFP",),
                 "2D", 5000.0, 100.0, None, 150.0, 15, _ORIG_SIEMENS, "axial", "ROW", 3, "T2w", None,
                 pixel_bandwidth=220.0),
        Protocol("FLAIR", "t2_tirm_tra_dark-fluid", "t2_tirm_tra_dark-fluid", "*tir2d1_16", ("SE", "IR"),
                 ("SK", "SP", "MP", "OSP"), ("IR",), "2D", 9000.0, 81.0, 2500.0, 150.0, 16,
                 _ORIG_SIEMENS, "axial", "ROW", 4, "FLAIR", None, pixel_bandwidth=287.0),
        Protocol("DWI", "ep2d_diff_3scan_trace_p2_TRACEW", "ep2d_diff_3scan_trace_p2", "*ep_b1000t",
                 ("EP",), ("SK", "SP"), ("PFP", "FS"), "2D", 4700.0, 84.0, None, 90.0, 1,
                 ("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND", "NORM"), "axial", "COL", 5, "other",
                 "derived", b_value=1000.0, pixel_bandwidth=1002.0),
        Protocol("ADC", "ep2d_diff_3scan_trace_p2_ADC", "ep2d_diff_3scan_trace_p2", "*ep_b0_1000",
                 ("EP",), ("SK", "SP"), ("PFP", "FS"), "2D", 4700.0, 84.0, None, 90.0, 1,
                 ("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"), "axial", "COL", 6, "other",
                 "derived", pixel_bandwidth=1002.0),
        Protocol("screenshot", "syngo.via Screenshot", "", "", (), (), (), "2D", 0.0, 0.0,
                 None, 0.0, 1, ("DERIVED", "SECONDARY", "SCREENSHOT"), "none", "ROW", 99, "other",
                 "derived"),
    ),
)
# fmt: on

# fmt: off
GE = Vendor(
    key="ge",
    manufacturer="GE MEDICAL SYSTEMS",
    model="DISCOVERY MR750w",
    software_versions=("27", "LX", "MR Software release:DV26.0_R03_1831.b"),
    field_strength=3.0,
    receive_coil="8HRBRAIN",
    study_description="MRI BRAIN WO CONTRAST",
    storage=Storage(signed=True, bits_stored=16, rescale=False),
    protocols=(
        Protocol("localizer", "3Plane Loc SSFSE", "NEURO/BRAIN ROUTINE", "ssfse", ("SE",), ("SK", "SS"),
                 ("FAST_GEMS", "SS_GEMS"), "2D", 1200.0, 80.0, None, 90.0, 1,
                 ("ORIGINAL", "PRIMARY", "LOCALIZER"), "3-plane", "COL", 1, "other", "localizer"),
        Protocol("T1w", "Sag 3D BRAVO", "NEURO/BRAIN ROUTINE", "efgre3d", ("RM", "IR"), ("SS", "SK"),
                 ("FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS", "ACC_GEMS", "IR_GEMS"), "3D", 8.2, 3.2, 450.0,
                 12.0, 1, ("ORIGINAL", "PRIMARY", "OTHER"), "sagittal", "ROW", 2, "T1w", None,
                 pixel_bandwidth=244.1),
        Protocol("T2w", "AX T2 FSE", "NEURO/BRAIN ROUTINE", "fse-xl", ("SE",), ("SK",),
                 ("FAST_GEMS", "FILTERED_GEMS"), "2D", 4800.0, 102.0, None, 111.0, 18,
                 ("ORIGINAL", "PRIMARY", "OTHER"), "axial", "COL", 3, "T2w", None, pixel_bandwidth=195.3),
        Protocol("FLAIR", "AX T2 FLAIR", "NEURO/BRAIN ROUTINE", "fsirxl", ("SE", "IR"), ("SK", "MP"),
                 ("FAST_GEMS", "FILTERED_GEMS", "IR_GEMS"), "2D", 9500.0, 140.0, 2375.0, 160.0, 24,
                 ("ORIGINAL", "PRIMARY", "OTHER"), "axial", "COL", 4, "FLAIR", None, pixel_bandwidth=195.3),
        Protocol("DWI", "Ax DWI b1000", "NEURO/BRAIN ROUTINE", "epi2", ("EP",), ("SK", "SS"),
                 ("EPI_GEMS", "PFF", "FS"), "2D", 7000.0, 75.0, None, 90.0, 1,
                 ("ORIGINAL", "PRIMARY", "OTHER"), "axial", "COL", 5, "other", None, b_value=1000.0,
                 pixel_bandwidth=1953.1),
        Protocol("ADC", "Apparent Diffusion Coefficient (mm2/s)", "NEURO/BRAIN ROUTINE", "epi2", ("EP",),
                 ("SK", "SS"), ("EPI_GEMS", "PFF", "FS"), "2D", 7000.0, 75.0, None, 90.0, 1,
                 ("DERIVED", "PRIMARY", "ADC"), "axial", "COL", 500, "other", "derived",
                 pixel_bandwidth=1953.1),
        Protocol("screenshot", "Screen Save", "", "", (), (), (), "2D", 0.0, 0.0, None, 0.0, 1,
                 ("DERIVED", "SECONDARY", "SCREEN SAVE"), "none", "ROW", 999, "other", "derived"),
    ),
)
# fmt: on

# fmt: off
_P = "ORIGINAL", "PRIMARY"
PHILIPS = Vendor(
    key="philips",
    manufacturer="Philips Medical Systems",
    model="Ingenia",
    software_versions=("5.7.1", "5.7.1.0"),
    field_strength=3.0,
    receive_coil="dS Head 32ch",
    study_description="Brain routine",
    storage=Storage(signed=False, bits_stored=12, rescale=True),
    protocols=(
        Protocol("localizer", "Survey", "Survey", "", ("GR",), ("SP",), ("OTHER",), "2D", 11.0, 4.6, None,
                 15.0, 1, (*_P, "M_FFE", "M", "FFE"), "3-plane", "ROW", 101, "other", "localizer"),
        Protocol("T1w", "3D_T1_TFE", "3D_T1_TFE", "", ("GR",), ("SP", "MP"), ("OTHER",), "3D", 8.1, 3.7,
                 None, 8.0, 1, (*_P, "M_FFE", "M", "FFE"), "axial", "COL", 201, "T1w", None,
                 pixel_bandwidth=241.0),
        Protocol("T2w", "T2W_TSE", "T2W_TSE", "", ("SE",), ("SK",), ("OTHER",), "2D", 3000.0, 80.0, None,
                 90.0, 15, (*_P, "M_SE", "M", "SE"), "axial", "COL", 301, "T2w", None,
                 pixel_bandwidth=217.0),
        Protocol("FLAIR", "T2W_FLAIR", "T2W_FLAIR", "", ("SE", "IR"), ("SK", "MP"), ("IR",), "2D", 11000.0,
                 125.0, 2800.0, 90.0, 28, (*_P, "M_IR", "M", "IR"), "axial", "COL", 401, "FLAIR", None,
                 pixel_bandwidth=209.0),
        Protocol("DWI", "DWI_SENSE", "DWI_SENSE", "", ("EP",), ("SK",), ("FS",), "2D", 3400.0, 67.0, None,
                 90.0, 1, (*_P, "M_SE", "M", "SE"), "axial", "COL", 501, "other", None, b_value=1000.0,
                 pixel_bandwidth=2100.0),
        Protocol("ADC", "dADC_DWI_SENSE", "DWI_SENSE", "", ("EP",), ("SK",), ("FS",), "2D", 3400.0, 67.0,
                 None, 90.0, 1, ("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), "axial", "COL", 502, "other",
                 "derived", pixel_bandwidth=2100.0),
        Protocol("screenshot", "Secondary capture", "", "", (), (), (), "2D", 0.0, 0.0, None,
                 0.0, 1, ("DERIVED", "SECONDARY"), "none", "ROW", 1001, "other", "derived"),
    ),
)
# fmt: on

VENDORS: tuple[Vendor, ...] = (SIEMENS, GE, PHILIPS)


# --------------------------------------------------------------------------------------------------
# Header content


@dataclass(frozen=True)
class Patient:
    """Patient module values (all synthetic, but shaped like PHI so leak tests mean something)."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    weight_kg: float


@dataclass(frozen=True)
class Study:
    """General Study/Equipment values shared by all series of one visit."""

    study_uid: str
    frame_of_reference_uid: str
    study_id: str
    accession: str
    date: str
    time: str
    patient_age: str
    institution: str
    institution_address: str
    station_name: str
    referring_physician: str
    operator: str


@dataclass(frozen=True)
class SeriesHeader:
    """Everything a series' files share; `uid_seed` makes SOPInstanceUIDs deterministic."""

    patient: Patient
    study: Study
    vendor: Vendor
    protocol: Protocol
    series_uid: str
    time: str
    uid_seed: str


def _ds(x: float) -> str:
    """A DS string of at most 16 characters (the VR limit) that parses back to ~x."""
    return format_number_as_ds(float(x) + 0.0)


def _new_dataset(sop_class: str, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _fill_common(ds: Dataset, h: SeriesHeader, sop_class: str, sop_uid: str, content_time: str) -> None:
    p, s, v, pr = h.patient, h.study, h.vendor, h.protocol
    ds.ImageType = list(pr.image_type)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = s.date
    ds.SeriesDate = s.date
    ds.AcquisitionDate = s.date
    ds.ContentDate = s.date
    ds.StudyTime = s.time
    ds.SeriesTime = h.time
    ds.AcquisitionTime = h.time
    ds.ContentTime = content_time
    ds.AccessionNumber = s.accession
    ds.Modality = "MR"
    ds.Manufacturer = v.manufacturer
    ds.InstitutionName = s.institution
    ds.InstitutionAddress = s.institution_address
    ds.ReferringPhysicianName = s.referring_physician
    ds.StationName = s.station_name
    ds.StudyDescription = v.study_description
    ds.SeriesDescription = pr.series_description
    ds.OperatorsName = s.operator
    ds.ManufacturerModelName = v.model
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.PatientAge = s.patient_age
    ds.PatientWeight = _ds(p.weight_kg)
    ds.BodyPartExamined = "BRAIN"
    ds.SoftwareVersions = list(v.software_versions) if len(v.software_versions) > 1 else v.software_versions[0]
    ds.ProtocolName = pr.protocol_name
    ds.StudyInstanceUID = s.study_uid
    ds.SeriesInstanceUID = h.series_uid
    ds.StudyID = s.study_id
    ds.SeriesNumber = pr.series_number


def _fill_mr(ds: Dataset, h: SeriesHeader) -> None:
    v, pr = h.vendor, h.protocol
    ds.ScanningSequence = list(pr.scanning_sequence)
    ds.SequenceVariant = list(pr.sequence_variant)
    ds.ScanOptions = list(pr.scan_options) if pr.scan_options else ""
    ds.MRAcquisitionType = pr.acquisition_type
    if pr.sequence_name:
        ds.SequenceName = pr.sequence_name
    ds.RepetitionTime = _ds(pr.repetition_time)
    ds.EchoTime = _ds(pr.echo_time)
    if pr.inversion_time is not None:
        ds.InversionTime = _ds(pr.inversion_time)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(v.imaging_frequency)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = _ds(v.field_strength)
    ds.EchoTrainLength = str(pr.echo_train_length)
    ds.PixelBandwidth = _ds(pr.pixel_bandwidth)
    ds.ReceiveCoilName = v.receive_coil
    ds.InPlanePhaseEncodingDirection = pr.phase_encoding
    ds.FlipAngle = _ds(pr.flip_angle)
    ds.PatientPosition = "HFS"
    if pr.b_value is not None:
        ds.DiffusionBValue = pr.b_value
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = h.study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def encode_pixels(real: np.ndarray, storage: Storage) -> tuple[np.ndarray, str | None]:
    """Quantise real-valued pixels for storage; returns (stored array, RescaleSlope string or None).

    With `storage.rescale` (Philips) the stored integers fill about 3/4 of the bit range and the
    slope, written as a DS string, converts them back; the slope actually parsed from that string
    is the one used, so readers recover `real` to within half a stored step.
    """
    top = (1 << (storage.bits_stored - (1 if storage.signed else 0))) - 1
    slope_str: str | None = None
    values = np.maximum(real, 0.0)
    if storage.rescale:
        peak = float(np.percentile(values, 99.9)) or 1.0
        slope_str = _ds(peak / (0.75 * top))
        values = values / float(slope_str)
    stored = np.clip(np.rint(values), 0, top)
    return stored.astype(np.int16 if storage.signed else np.uint16), slope_str


def write_mr_series(
    paths: Sequence[Path], header: SeriesHeader, grids: Sequence[SliceGrid], volumes: Sequence[np.ndarray]
) -> None:
    """Write one MR Image Storage file per slice.

    Args:
        paths: one output path per slice, in grid order then slice order.
        header: series-level values.
        grids: one or more slice stacks (a 3-plane localizer has three single-slice grids).
        volumes: real-valued (slices, rows, cols) arrays matching `grids`.
    """
    n_files = sum(g.n_slices for g in grids)
    if len(paths) != n_files:
        raise ValueError(f"{len(paths)} paths for {n_files} slices")
    for g, vol in zip(grids, volumes, strict=True):
        if vol.shape != (g.n_slices, g.rows, g.cols):
            raise ValueError(f"volume shape {vol.shape} does not match grid {(g.n_slices, g.rows, g.cols)}")
    storage = header.vendor.storage
    stacked = np.concatenate([v.reshape(-1) for v in volumes])
    stored_all, slope = encode_pixels(stacked, storage)
    peak = float(np.percentile(stacked, 99.5))
    index = 0
    offset = 0
    for g, vol in zip(grids, volumes, strict=True):
        size = vol[0].size
        for k in range(g.n_slices):
            pixels = stored_all[offset : offset + size].reshape(g.rows, g.cols)
            offset += size
            sop_uid = deterministic_uid(header.uid_seed, "sop", index)
            ds = _new_dataset(MRImageStorage, sop_uid)
            _fill_common(ds, header, MRImageStorage, sop_uid, header.time)
            _fill_mr(ds, header)
            ds.SliceThickness = _ds(g.slice_thickness)
            ds.SpacingBetweenSlices = _ds(g.slice_spacing)
            ds.InstanceNumber = index + 1
            ipp = g.position(k)
            ds.ImagePositionPatient = [_ds(x) for x in ipp]
            ds.ImageOrientationPatient = [_ds(x) for x in (*g.row_dir, *g.col_dir)]
            ds.SliceLocation = _ds(float(np.dot(ipp, g.normal)))
            ds.PixelSpacing = [_ds(g.pixel_spacing[0]), _ds(g.pixel_spacing[1])]
            ds.set_pixel_data(pixels, "MONOCHROME2", storage.bits_stored, generate_instance_uid=False)
            ds.WindowCenter = _ds(peak / 2)
            ds.WindowWidth = _ds(peak)
            if slope is not None:
                ds.RescaleIntercept = "0"
                ds.RescaleSlope = slope
                ds.RescaleType = "normalized"
            ds.save_as(paths[index], enforce_file_format=True)
            index += 1


def write_secondary_capture(path: Path, header: SeriesHeader, rgb: np.ndarray) -> None:
    """Write an RGB Secondary Capture ("screenshot" with burned-in annotation); it has no geometry."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"screenshot must be (rows, cols, 3) uint8, got {rgb.shape} {rgb.dtype}")
    sop_uid = deterministic_uid(header.uid_seed, "sop", 0)
    ds = _new_dataset(SecondaryCaptureImageStorage, sop_uid)
    _fill_common(ds, header, SecondaryCaptureImageStorage, sop_uid, header.time)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.InstanceNumber = 1
    ds.set_pixel_data(rgb, "RGB", 8, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
