"""Generate a synthetic hospital DICOM export: patients, studies, series, junk files and the truth.

The export is what a curation pipeline would receive from a PACS query/retrieve: a tree of DICOM
files in vendor-specific layouts (one of them flat and extension-less), with scouts, diffusion maps
and screenshots mixed in, some broken files, and PHI in the headers. Next to it lie a clinical
registry (labels.csv, keyed by the raw PatientID as a hospital keeps it) and truth.json, which says
what a correct pipeline should conclude about every series and file.

Everything is derived from `SynthConfig.seed` (no clock, no global RNG), so the same config writes
byte-identical files.

Layout under `root/dicom` (no PHI in any path):
    siemens: export_siemens/study{NNN}/series{NNN}/IM{NNNN}.dcm
    ge:      GEMS_EXPORT/exam{NNNN}/series{N}/i{NNNN}.MRDC.{N}    (no .dcm extension)
    philips: DICOM/ST{NNNNN}/IM_{NNNNN}    (all series of a study in one folder, no extension)
Broken files: incomplete_transfer/IM000001.dcm (truncated), README.txt and <first vendor folder>/.DS_Store
(not DICOM), and an empty file named like an instance in the first study's localizer folder.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage as ndi

from synth.anatomy import Pose, SubjectHead, SubjectTraits, build_subject, resample
from synth.contrast import add_phase_ghosting, add_rician_noise, bias_field, contrast, render
from synth.dicom_writer import (
    VENDORS,
    Patient,
    Protocol,
    SeriesHeader,
    SliceGrid,
    Study,
    Vendor,
    deterministic_uid,
    plane_directions,
    write_mr_series,
    write_secondary_capture,
)

GENERATOR = "mrifoundry-synth"
GENERATOR_VERSION = 1
LABELS = ("T1w", "T2w", "FLAIR", "other")
# Header-level rejection codes a correct ingest gives (None = goes on to classification).
REJECTION_REASONS = ("localizer", "derived")
# File-level codes for the deliberately broken files.
BROKEN_FILE_REASONS = ("truncated", "not_dicom", "empty_file")
PRESETS = ("tiny", "demo", "large")
# MNI point the technologist centres the field of view on (middle of the brain, a little low).
FOV_CENTRE_MNI = (0.0, -20.0, 5.0)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Attributes:
        n_subjects: patients in the export.
        studies_per_subject: visits per patient (follow-ups may be on another vendor's scanner).
        voxel_mm: native voxel size of the structural series (2 mm keeps the demo fast; 1 mm is a
            realistic, sizable export). 2D series use thicker slices.
        seed: everything random derives from it.
        broken_files: add a truncated file, non-DICOM files and an empty file.
    """

    n_subjects: int = 4
    studies_per_subject: int = 1
    voxel_mm: float = 2.0
    seed: int = 0
    broken_files: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.n_subjects <= 10_000:
            raise ValueError(f"n_subjects must be in [1, 10000], got {self.n_subjects}")
        if not 1 <= self.studies_per_subject <= 20:
            raise ValueError(f"studies_per_subject must be in [1, 20], got {self.studies_per_subject}")
        if not 0.7 <= self.voxel_mm <= 4.0:
            raise ValueError(f"voxel_mm must be in [0.7, 4.0] mm, got {self.voxel_mm}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @classmethod
    def preset(cls, name: str) -> SynthConfig:
        """Named sizes: tiny (2 subjects at 2.5 mm, for tests), demo (6 at 2 mm), large (40 at 1 mm)."""
        presets = {
            "tiny": cls(n_subjects=2, voxel_mm=2.5),
            "demo": cls(n_subjects=6, voxel_mm=2.0),
            "large": cls(n_subjects=40, voxel_mm=1.0),
        }
        try:
            return presets[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class ExportSummary:
    """Where the export landed and what it holds.

    Attributes:
        root: the export root.
        dicom_dir: root/dicom, what the pipeline ingests (DICOM plus the deliberate junk).
        labels_csv: root/labels.csv: PatientID,lesion,enlarged_ventricles (0/1), keyed by raw PatientID.
        truth_json: root/truth.json: per series folder, UIDs, expected label/rejection, vendor, pose.
        phi_values: every PHI string written into headers, for leak tests.
        n_series: series written (the truncated file's one-file series is not counted).
        n_files: DICOM files of those series (broken files not counted).
    """

    root: Path
    dicom_dir: Path
    labels_csv: Path
    truth_json: Path
    phi_values: tuple[str, ...]
    n_series: int
    n_files: int


# --------------------------------------------------------------------------------------------------
# Synthetic people and places (invented; none refers to a real person or hospital)

_FAMILY = (
    "HARTWELL", "OKONKWO", "VANDERBERG", "FITZGERALD", "NAKAMURA", "LINDQVIST", "ABERNATHY",
    "CASTELLANOS", "MBEKI", "KOWALCZYK", "ROSSINI", "DUBREUIL", "HALVORSEN", "PETROVSKA",
    "ACHTERBERG", "QUINTANILLA", "SOROKINA", "WHITMORE", "BALASUBRAMANIAN", "OYELARAN",
    "MACALLISTER", "ZELENKOVA", "HENNEBERG", "TANAKADATE",
)  # fmt: skip
_GIVEN = {
    "F": ("EVELYN", "MARGARETA", "JOSEPHINE", "ADAEZE", "INGRID", "ROSALIND", "FRANCESCA", "YUKIKO"),
    "M": ("THEODORE", "BARTHOLOMEW", "OLUWASEUN", "LEOPOLD", "CORNELIUS", "AUGUSTIN", "RADOMIR", "HIROSHI"),
}
_PHYSICIANS = (
    "STRAUSSBERG^HELENA^^DR", "ODUYA^MARCUS^^DR", "VILLANUEVA^CARMEN^^DR", "PRZYBYLSKI^TOMASZ^^DR",
)  # fmt: skip
_OPERATORS = ("RT^QUENTORA", "RT^BELLAMIRE", "RT^OSTRANDER")


@dataclass(frozen=True)
class _Site:
    institution: str
    address: str
    station: str
    layout: str


_SITES = {
    "siemens": _Site("Riverside General Hospital", "12 Harbour Road, Portmere", "MRC35190", "siemens"),
    "ge": _Site("Saint Aldric Medical Center", "400 Aldric Avenue, Kingsbridge", "GEMRNEURO7", "ge"),
    "philips": _Site("Northgate University Clinic", "7 Northgate Lane, Easthaven", "ING3T-EAST", "philips"),
}

# Minutes after study start at which each role's series is acquired.
_SERIES_MINUTE = {"localizer": 0, "T1w": 1, "T2w": 7, "FLAIR": 11, "DWI": 16, "ADC": 16, "screenshot": 24}
# Label combinations (lesion, enlarged_ventricles): any two consecutive subjects starting at an even
# index cover both classes of both labels, and every block of four is balanced.
_PAIRS_A = ((1, 0), (0, 1))
_PAIRS_B = ((1, 1), (0, 0))


@dataclass(frozen=True)
class _StudyPlan:
    index: int
    vendor: Vendor
    site: _Site
    study: Study
    pose: Pose


@dataclass(frozen=True)
class _SubjectPlan:
    index: int
    patient: Patient
    traits: SubjectTraits
    studies: tuple[_StudyPlan, ...]


def _rng(config: SynthConfig, *keys: int) -> np.random.Generator:
    """Independent, reproducible stream per (seed, keys): adding a series never shifts another's noise."""
    return np.random.default_rng([config.seed, *keys])


def _uid(config: SynthConfig, *parts: object) -> str:
    return deterministic_uid(GENERATOR, config.seed, *parts)


def _labels_for(config: SynthConfig, i: int) -> tuple[int, int]:
    a = _PAIRS_A if config.seed % 2 == 0 else _PAIRS_A[::-1]
    b = _PAIRS_B if (config.seed // 2) % 2 == 0 else _PAIRS_B[::-1]
    return (*a, *b)[i % 4]


def _plan(config: SynthConfig) -> list[_SubjectPlan]:
    """Draw patients, visits and poses (cheap; no pixels)."""
    people = _rng(config, 1)
    combos = [(f, s, g) for f in _FAMILY for s in ("F", "M") for g in _GIVEN[s]]
    picks = people.permutation(len(combos))
    mrns = people.choice(90_000_000, size=config.n_subjects, replace=False) + 10_000_000
    n_studies = config.n_subjects * config.studies_per_subject
    accessions = people.choice(90_000_000, size=n_studies, replace=False) + 10_000_000
    subjects: list[_SubjectPlan] = []
    for i in range(config.n_subjects):
        r = _rng(config, 2, i)
        family, sex, given = combos[int(picks[i % len(combos)])]
        suffix = "" if i < len(combos) else f"^{i // len(combos) + 1}"
        first_visit = dt.date(2019, 1, 2) + dt.timedelta(days=int(r.integers(0, 1400)))
        age = int(r.integers(24, 86))
        birth = first_visit - dt.timedelta(days=age * 365 + int(r.integers(0, 365)))
        patient = Patient(
            name=f"{family}^{given}{suffix}",
            patient_id=f"MRN{int(mrns[i]):08d}",
            birth_date=birth.strftime("%Y%m%d"),
            sex=sex,
            weight_kg=float(round(r.uniform(52.0, 98.0), 1)),
        )
        lesion, enlarged = _labels_for(config, i)
        traits = SubjectTraits(
            lesion=bool(lesion),
            enlarged_ventricles=bool(enlarged),
            skull_scale=float(round(r.uniform(0.85, 1.2), 3)),
            head_scale=float(round(r.uniform(0.95, 1.05), 3)),
        )
        studies = []
        visit = first_visit
        for j in range(config.studies_per_subject):
            g = i * config.studies_per_subject + j
            vendor = VENDORS[(i + j + config.seed) % len(VENDORS)]
            site = _SITES[vendor.key]
            if j:
                visit = visit + dt.timedelta(days=int(r.integers(120, 500)))
            start = dt.datetime.combine(visit, dt.time(7, 30)) + dt.timedelta(minutes=int(r.integers(0, 600)))
            age_at = (visit - birth).days // 365
            study = Study(
                study_uid=_uid(config, "study", g),
                frame_of_reference_uid=_uid(config, "for", g),
                study_id=str(1000 + g),
                accession=f"RA{int(accessions[g]):08d}",
                date=visit.strftime("%Y%m%d"),
                time=start.strftime("%H%M%S"),
                patient_age=f"{age_at:03d}Y",
                institution=site.institution,
                institution_address=site.address,
                station_name=site.station,
                referring_physician=_PHYSICIANS[int(r.integers(len(_PHYSICIANS)))],
                operator=_OPERATORS[int(r.integers(len(_OPERATORS)))],
            )
            pose = Pose(
                rotation_deg=tuple(float(round(a, 3)) for a in r.uniform(-8.0, 8.0, 3)),  # type: ignore[arg-type]
                translation_mm=tuple(float(round(t, 3)) for t in r.uniform(-8.0, 8.0, 3)),  # type: ignore[arg-type]
                scale=traits.head_scale,
            )
            studies.append(_StudyPlan(g, vendor, site, study, pose))
        subjects.append(_SubjectPlan(i, patient, traits, tuple(studies)))
    return subjects


# --------------------------------------------------------------------------------------------------
# Acquisition geometry per protocol


@dataclass(frozen=True)
class _Acq:
    """Native grid parameters: FOV along rows/cols (mm), pixel size, coverage and slice profile."""

    fov_rows_mm: float
    fov_cols_mm: float
    pixel_mm: float
    thickness_mm: float
    spacing_mm: float
    coverage_mm: float
    tilt_deg: float
    matrix: int | None = None  # fixed in-plane matrix (low-resolution series) instead of pixel_mm


def _acquisition(vendor: Vendor, protocol: Protocol, voxel_mm: float, r: np.random.Generator) -> _Acq:
    tilt_limit = {"siemens": 8.0, "ge": 12.0, "philips": 6.0}[vendor.key]
    tilt = float(r.uniform(-tilt_limit, tilt_limit))
    # 2D slices: thicker than in-plane, with a vendor-typical gap.
    thick = max(3.0, 2.0 * voxel_mm)
    gap = {"siemens": 0.1 * thick, "ge": 1.0, "philips": 0.5}[vendor.key]
    # Phase FOV is reduced to 90% along the phase-encode direction (non-square matrices).
    if protocol.role == "T1w" and protocol.plane == "sagittal":
        return _Acq(256.0, 240.0, voxel_mm, voxel_mm, voxel_mm, 176.0, tilt / 3)
    if protocol.role == "T1w":
        return _Acq(240.0, 216.0, voxel_mm, voxel_mm, voxel_mm, 180.0, tilt / 2)
    if protocol.role in ("T2w", "FLAIR"):
        rows_fov = 230.0 * (0.9 if protocol.phase_encoding == "COL" else 1.0)
        cols_fov = 230.0 * (0.9 if protocol.phase_encoding == "ROW" else 1.0)
        return _Acq(rows_fov, cols_fov, voxel_mm, thick, thick + gap, 160.0, tilt)
    if protocol.role in ("DWI", "ADC"):
        return _Acq(230.0, 230.0, 230.0 / 64, 5.0, 6.5, 143.0, tilt, matrix=64)
    if protocol.role == "localizer":
        return _Acq(256.0, 256.0, 2.0, 7.0, 7.0, 7.0, 0.0, matrix=128)
    raise ValueError(f"no acquisition geometry for role {protocol.role!r}")


def _grids(
    vendor: Vendor, protocol: Protocol, config: SynthConfig, centre_lps: np.ndarray, r: np.random.Generator
) -> list[SliceGrid]:
    """The native slice stack(s) of a series (three single-slice stacks for a 3-plane localizer)."""
    acq = _acquisition(vendor, protocol, config.voxel_mm, r)
    if acq.matrix:
        rows = cols = acq.matrix
        pix = acq.fov_rows_mm / acq.matrix
    else:
        pix = acq.pixel_mm
        rows, cols = round(acq.fov_rows_mm / pix), round(acq.fov_cols_mm / pix)
    n = max(1, round(acq.coverage_mm / acq.spacing_mm))
    planes = ("axial", "sagittal", "coronal") if protocol.plane == "3-plane" else (protocol.plane,)
    grids = []
    for plane in planes:
        row_dir, col_dir = plane_directions(plane, acq.tilt_deg)
        grids.append(
            SliceGrid.centred(
                centre_lps, row_dir, col_dir, (rows, cols, n), (pix, pix), acq.thickness_mm, acq.spacing_mm
            )
        )
    return grids


# --------------------------------------------------------------------------------------------------
# Pixels


def _acquire(image: np.ndarray, affine: np.ndarray, pose: Pose, grid: SliceGrid) -> np.ndarray:
    """Sample a rendered MNI-space image on a native grid, averaging across thick slices."""
    if grid.slice_thickness > 1.5 * min(grid.pixel_spacing):
        offsets = np.linspace(-grid.slice_thickness / 3, grid.slice_thickness / 3, 3)
    else:
        offsets = np.zeros(1)
    shape = (grid.n_slices, grid.rows, grid.cols)
    out = np.zeros(shape, dtype=np.float32)
    for off in offsets:
        out += resample(image, affine, pose, grid.index_to_lps(float(off)), shape)
    return out / np.float32(len(offsets))


def _series_pose(study_pose: Pose, r: np.random.Generator) -> Pose:
    """The study pose plus a little motion between series (totals stay within +-10 deg / mm)."""
    rot = np.asarray(study_pose.rotation_deg) + r.uniform(-2.0, 2.0, 3)
    shift = np.asarray(study_pose.translation_mm) + r.uniform(-2.0, 2.0, 3)
    return Pose(
        rotation_deg=tuple(float(round(a, 3)) for a in rot),  # type: ignore[arg-type]
        translation_mm=tuple(float(round(t, 3)) for t in shift),  # type: ignore[arg-type]
        scale=study_pose.scale,
    )


@dataclass
class _RenderCache:
    """Rendered reference images of the current subject, reused across its series and visits."""

    head: SubjectHead
    images: dict[tuple[str, int, float], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def get(self, name: str, step: int, smooth_mm: float) -> tuple[np.ndarray, np.ndarray]:
        key = (name, step, round(smooth_mm, 3))
        if key not in self.images:
            self.images[key] = render(self.head, contrast(name), step=step, smooth_mm=smooth_mm)
        return self.images[key]


def _series_pixels(
    cache: _RenderCache, protocol: Protocol, grids: list[SliceGrid], pose: Pose, ghosting: bool, r: np.random.Generator
) -> list[np.ndarray]:
    """Real-valued pixels of one series: render, acquire, bias, (ghost), noise, scanner gain."""
    name = "DWI" if protocol.role == "DWI" else protocol.role
    con = contrast(name)
    pix = min(grids[0].pixel_spacing)
    step = 2 if pix >= 3.0 else 1
    smooth = 0.42 * pix if pix > 1.2 else 0.0
    image, affine = cache.get(name, step, smooth)
    volumes = []
    for grid in grids:
        vol = _acquire(image, affine, pose, grid)
        if protocol.role != "ADC":
            vol *= bias_field(vol.shape, r)  # type: ignore[arg-type]
        if ghosting:
            vol = add_phase_ghosting(vol, 2 if protocol.phase_encoding == "ROW" else 1, r)
        vol = add_rician_noise(vol, con.noise * abs(con.wm), r)
        volumes.append(vol)
    if protocol.role != "ADC":  # ADC keeps physical units (1e-6 mm^2/s)
        peak = float(np.percentile(np.concatenate([v.ravel() for v in volumes]), 99.9)) or 1.0
        gain = float(r.uniform(700.0, 2200.0)) / peak
        volumes = [v * np.float32(gain) for v in volumes]
    return volumes


def _screenshot(volume: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """An RGB 'screen save' of a mid slice with a burned-in ruler and text block."""
    mid = volume[volume.shape[0] // 2]
    img = ndi.zoom(mid, (192 / mid.shape[0], 192 / mid.shape[1]), order=1)
    img = np.clip(img / (np.percentile(img, 99.5) or 1.0) * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(img[:, :, None], 3, axis=2)
    y = int(r.integers(60, 130))
    rgb[y : y + 2, 40:150] = (255, 220, 0)  # yellow measurement line
    rgb[6:18, 6:90] = 255  # white "text" block (burned-in annotation)
    rgb[8:16:2, 8:88:3] = 0
    return rgb


# --------------------------------------------------------------------------------------------------
# Layout


class _Layout:
    """File naming of one study, in its vendor's export style."""

    def __init__(self, dicom_dir: Path, site: _Site, study_index: int) -> None:
        self.dicom_dir = dicom_dir
        self.site = site
        self.study_index = study_index
        self.counter = 0  # running instance number for the flat (philips) layout

    def series_folder(self, series_number: int) -> Path:
        g = self.study_index
        if self.site.layout == "siemens":
            return self.dicom_dir / "export_siemens" / f"study{g + 1:03d}" / f"series{series_number:03d}"
        if self.site.layout == "ge":
            return self.dicom_dir / "GEMS_EXPORT" / f"exam{1000 + g}" / f"series{series_number}"
        return self.dicom_dir / "DICOM" / f"ST{g + 1:05d}"

    def file_name(self, series_number: int, instance: int) -> str:
        if self.site.layout == "siemens":
            return f"IM{instance:04d}.dcm"
        if self.site.layout == "ge":
            return f"i{instance:04d}.MRDC.{instance}"
        self.counter += 1
        return f"IM_{self.counter:05d}"

    def spare_path(self, series_number: int) -> Path:
        """A name no series uses, in the folder of `series_number` (for the empty file)."""
        name = {"siemens": "IM9999.dcm", "ge": "i9999.MRDC.9999"}.get(self.site.layout, "IM_99999")
        return self.series_folder(series_number) / name

    def paths(self, series_number: int, n: int) -> list[Path]:
        folder = self.series_folder(series_number)
        folder.mkdir(parents=True, exist_ok=True)
        return [folder / self.file_name(series_number, i + 1) for i in range(n)]


# --------------------------------------------------------------------------------------------------
# Export


def _prepare_root(root: Path) -> None:
    """Refuse to write into a folder that holds anything but a previous synthetic export."""
    truth = root / "truth.json"
    if truth.exists():
        try:
            marker = json.loads(truth.read_text()).get("generator")
        except (OSError, ValueError):
            marker = None
        if marker != GENERATOR:
            raise FileExistsError(f"{truth} exists but was not written by {GENERATOR}; refusing to overwrite")
        shutil.rmtree(root / "dicom", ignore_errors=True)
        for name in ("labels.csv", "truth.json"):
            (root / name).unlink(missing_ok=True)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"export directory {root} is not empty and holds no previous synthetic export")
    (root / "dicom").mkdir(parents=True, exist_ok=True)


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _write_broken_files(root: Path, first_t1: Path, empty_slot: Path, config: SynthConfig) -> list[dict]:
    """A truncated copy of a real slice (own series, own folder), a README, a .DS_Store and an empty file."""
    dicom_dir = root / "dicom"
    records = []
    ds = pydicom.dcmread(first_t1)
    ds.SOPInstanceUID = _uid(config, "truncated", "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = _uid(config, "truncated", "series")
    ds.SeriesNumber = 9001
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    truncated = dicom_dir / "incomplete_transfer" / "IM000001.dcm"
    truncated.parent.mkdir(parents=True, exist_ok=True)
    truncated.write_bytes(data[: len(data) // 2])
    records.append({"path": _rel(root, truncated), "reason": "truncated", "kind": "truncated_dicom"})

    readme = dicom_dir / "README.txt"
    readme.write_text(
        "PACS export\nThis medium contains DICOM images exported for research transfer.\n"
        "Open with any DICOM viewer. Do not edit files in this folder.\n",
        encoding="utf-8",
        newline="\n",
    )
    records.append({"path": _rel(root, readme), "reason": "not_dicom", "kind": "text"})

    ds_store = dicom_dir / empty_slot.relative_to(dicom_dir).parts[0] / ".DS_Store"
    ds_store.parent.mkdir(parents=True, exist_ok=True)
    junk = _rng(config, 99).integers(0, 256, size=1024, dtype=np.uint8).tobytes()
    ds_store.write_bytes(b"\x00\x00\x00\x01Bud1" + junk)
    records.append({"path": _rel(root, ds_store), "reason": "not_dicom", "kind": "binary"})

    empty_slot.parent.mkdir(parents=True, exist_ok=True)
    empty_slot.write_bytes(b"")
    records.append({"path": _rel(root, empty_slot), "reason": "empty_file", "kind": "empty"})
    return records


def _phi(subjects: list[_SubjectPlan]) -> tuple[str, ...]:
    values: set[str] = set()
    for s in subjects:
        p = s.patient
        values.update({p.name, p.name.split("^")[0], p.patient_id, p.birth_date})
        for st in s.studies:
            values.update(
                {
                    st.study.accession,
                    st.study.institution,
                    st.study.institution_address,
                    st.study.station_name,
                    st.study.referring_physician,
                    st.study.referring_physician.split("^")[0],
                    st.study.operator,
                }
            )
    return tuple(sorted(values))


def _pose_record(pose: Pose) -> dict:
    return {
        "rotation_deg": list(pose.rotation_deg),
        "translation_mm": list(pose.translation_mm),
        "scale": pose.scale,
        "mni_to_scanner_ras": [[round(float(x), 6) for x in row] for row in pose.matrix()],
    }


@dataclass
class _Run:
    """Mutable bookkeeping of one generate_export call."""

    root: Path
    config: SynthConfig
    total: int
    progress: Callable[[int, int], None] | None
    records: list[dict] = field(default_factory=list)
    n_files: int = 0
    first_t1: Path | None = None
    empty_slot: Path | None = None

    def finished(self, record: dict, paths: list[Path]) -> None:
        record["folder"] = _rel(self.root, paths[0].parent)
        record["n_files"] = len(paths)
        self.records.append(record)
        self.n_files += len(paths)
        if self.progress is not None:
            self.progress(len(self.records), self.total)


def _write_study(run: _Run, subj: _SubjectPlan, st: _StudyPlan, cache: _RenderCache) -> None:
    """Render and write every series of one visit, in protocol order."""
    config = run.config
    layout = _Layout(run.root / "dicom", st.site, st.index)
    centre_ras = st.pose.matrix() @ np.array([*FOV_CENTRE_MNI, 1.0])
    centre_ras[:3] += _rng(config, 4, st.index).normal(0.0, 3.0, 3)  # the technologist's aim is imperfect
    centre_lps = centre_ras[:3] * np.array([-1.0, -1.0, 1.0])
    t2_volume: np.ndarray | None = None
    for role_index, protocol in enumerate(st.vendor.protocols):
        r = _rng(config, 5, st.index, role_index)
        header = SeriesHeader(
            patient=subj.patient,
            study=st.study,
            vendor=st.vendor,
            protocol=protocol,
            series_uid=_uid(config, "series", st.index, role_index),
            time=(
                dt.datetime.strptime(st.study.time, "%H%M%S")
                + dt.timedelta(minutes=_SERIES_MINUTE[protocol.role], seconds=role_index)
            ).strftime("%H%M%S"),
            uid_seed=f"{GENERATOR}/{config.seed}/{st.index}/{role_index}",
        )
        # One motion-corrupted series per export: the FLAIR of the last subject's first visit.
        ghosting = protocol.role == "FLAIR" and subj.index == config.n_subjects - 1 and st is subj.studies[0]
        record: dict = {
            "SeriesInstanceUID": header.series_uid,
            "StudyInstanceUID": st.study.study_uid,
            "PatientID": subj.patient.patient_id,
            "vendor": st.vendor.manufacturer,
            "SeriesNumber": protocol.series_number,
            "SeriesDescription": protocol.series_description,
            "role": protocol.role,
            "expected_label": protocol.expected_label,
            "expected_rejection": protocol.expected_rejection,
            "ghosting": ghosting,
        }
        if protocol.role == "screenshot":
            if t2_volume is None:
                raise ValueError(f"{st.vendor.key} protocol lists the screenshot before the T2w")
            paths = layout.paths(protocol.series_number, 1)
            write_secondary_capture(paths[0], header, _screenshot(t2_volume, r))
            run.finished(record, paths)
            continue
        pose = _series_pose(st.pose, r)
        grids = _grids(st.vendor, protocol, config, centre_lps, r)
        volumes = _series_pixels(cache, protocol, grids, pose, ghosting, r)
        paths = layout.paths(protocol.series_number, sum(g.n_slices for g in grids))
        write_mr_series(paths, header, grids, volumes)
        if protocol.role == "T2w":
            t2_volume = volumes[0]
        if protocol.role == "T1w" and run.first_t1 is None:
            run.first_t1 = paths[0]
        if protocol.role == "localizer" and run.empty_slot is None:
            run.empty_slot = layout.spare_path(protocol.series_number)
        g0 = grids[0]
        record.update(
            {
                "pose": _pose_record(pose),
                "matrix": [g0.rows, g0.cols],
                "n_slices": sum(g.n_slices for g in grids),
                "pixel_spacing_mm": list(g0.pixel_spacing),
                "slice_thickness_mm": g0.slice_thickness,
                "slice_spacing_mm": g0.slice_spacing,
                "phase_encoding": protocol.phase_encoding,
            }
        )
        run.finished(record, paths)


def generate_export(
    out_dir: Path, config: SynthConfig = SynthConfig(), progress: Callable[[int, int], None] | None = None
) -> ExportSummary:
    """Write a synthetic export into `out_dir` (created; a previous synthetic export there is replaced).

    Args:
        out_dir: export root; must be empty, missing, or hold an earlier output of this function.
        config: what to generate.
        progress: called with (series done, series total) after every series.

    Returns:
        Paths and counts; see `ExportSummary`.
    """
    root = Path(out_dir)
    _prepare_root(root)
    subjects = _plan(config)
    total = sum(len(st.vendor.protocols) for s in subjects for st in s.studies)
    run = _Run(root=root, config=config, total=total, progress=progress)
    anatomy: list[dict] = []
    for subj in subjects:
        head = build_subject(subj.traits, _rng(config, 3, subj.index))
        anatomy.append(
            {
                "n_lesions": head.n_lesions,
                "lesion_ml": round(head.lesion_ml, 3),
                "ventricle_ml": round(head.ventricle_ml, 3),
                "lesion_centres_mni": [[round(x, 1) for x in c] for c in head.lesion_centres_mni],
            }
        )
        cache = _RenderCache(head)
        for st in subj.studies:
            _write_study(run, subj, st, cache)
        del cache, head  # a subject's float volumes are ~200 MB; free them before the next one

    broken: list[dict] = []
    if config.broken_files:
        if run.first_t1 is None or run.empty_slot is None:
            raise ValueError("cannot make broken files: no T1w or localizer series was written")
        broken = _write_broken_files(root, run.first_t1, run.empty_slot, config)

    labels_csv = root / "labels.csv"
    lines = ["PatientID,lesion,enlarged_ventricles"]
    lines += [f"{s.patient.patient_id},{int(s.traits.lesion)},{int(s.traits.enlarged_ventricles)}" for s in subjects]
    labels_csv.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")

    truth_json = root / "truth.json"
    truth = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "config": asdict(config),
        "labels": list(LABELS),
        "rejection_reasons": list(REJECTION_REASONS),
        "subjects": [
            {
                "PatientID": s.patient.patient_id,
                "lesion": int(s.traits.lesion),
                "enlarged_ventricles": int(s.traits.enlarged_ventricles),
                "skull_scale": s.traits.skull_scale,
                "head_scale": s.traits.head_scale,
                "studies": [st.study.study_uid for st in s.studies],
                "vendors": [st.vendor.manufacturer for st in s.studies],
                **a,
            }
            for s, a in zip(subjects, anatomy, strict=True)
        ],
        "series": run.records,
        "broken_files": broken,
    }
    truth_json.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8", newline="\n")
    return ExportSummary(
        root=root,
        dicom_dir=root / "dicom",
        labels_csv=labels_csv,
        truth_json=truth_json,
        phi_values=_phi(subjects),
        n_series=len(run.records),
        n_files=run.n_files,
    )
