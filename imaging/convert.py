"""DICOM series -> one RAS NIfTI volume, with dicom2nifti first and the dcm2niix binary as fallback.

dicom2nifti runs in-process and validates the slice stack (uniform spacing, no gantry tilt, no
missing slices); dcm2niix copes with more vendor quirks. Both are normalised to RAS with
`nib.as_closest_canonical`, because dicom2nifti's "reorient" means LAS: on the XA30 enhanced T1 it
writes LAS with origin x=+100.42 where dcm2niix writes RAS with x=-89.58, the same grid stored
flipped. Comparing outputs therefore always happens in world coordinates.

A stack that is not a regular grid is refused rather than converted: a volume with non-uniform
slice spacing or a sheared (gantry-tilted) grid cannot be described by an orthogonal NIfTI affine,
and silently writing one corrupts every later step (registration, patching) without any error.
A 4D series is refused before any conversion when only 3D is wanted (its repeated slice positions
say so), so a 300-volume BOLD run costs a header read, not a conversion.

Every volume is also checked against the series' own headers before it is written: its eight corner
voxels must land where ImagePositionPatient / ImageOrientationPatient / PixelSpacing put them (1 mm)
and its voxel size must match. A converter whose grid fails that check (flipped slice order, shifted
origin) is treated like one that crashed: the other converter is tried, and if both fail the series
is rejected with both reasons. Siemens mosaics are the exception (their position refers to the
whole tile; both converters read the true slice positions from the CSA header).
"""

from __future__ import annotations

import gzip
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

log = logging.getLogger("mrifoundry.convert")

# dicom2nifti validation failures that mean "this stack is not one regular 3D grid": refused, no fallback.
_REFUSED = {
    "SLICE_INCREMENT_INCONSISTENT": "non-uniform slice spacing (irregular or missing slices)",
    "MISSING_DICOM_FILES": "missing slices in the stack",
    "NON_CUBICAL_IMAGE/GANTRY_TILT": "gantry tilt / sheared slice stack",
    "IMAGE_ORIENTATION_INCONSISTENT": "slices with different orientations",
    "TOO_FEW_SLICES/LOCALIZER": "too few slices (localizer?)",
    "NON_IMAGING_DICOM_FILES": "files without pixel data",
}
_DCM2NIIX_TIMEOUT_S = 600
# A converted grid must put its corner voxels within this distance of where the DICOM headers put them.
GEOMETRY_TOLERANCE_MM = 1.0


class ConversionError(Exception):
    """The series cannot be turned into one trustworthy volume; the message says why."""


class _Refused(ConversionError):
    """The stack is not one regular grid (or is 4D when 3D was asked): no converter may try it."""


def _finish(img: nib.Nifti1Image, allow_4d: bool) -> nib.Nifti1Image:
    """RAS-canonical 3D (or allowed 4D) volume on an orthogonal grid, or a refusal/error."""
    img = nib.as_closest_canonical(img)
    if img.ndim == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if img.ndim > 3 and not allow_4d:
        raise _Refused(
            f"4D series (shape {tuple(img.shape)}): time series or multi-echo, not one 3D volume; "
            f"pass allow_4d=True if that is intended"
        )
    if img.ndim < 3:
        raise ConversionError(f"{img.ndim}D result (shape {tuple(img.shape)}): not a volume")
    _check_grid(img.affine)
    return img


@dataclass(frozen=True)
class ConversionResult:
    nifti_path: Path
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    affine: tuple[tuple[float, ...], ...]
    orientation: str  # axis codes after reorientation, "RAS" for every volume written here
    converter: str  # "dicom2nifti" or "dcm2niix"


def _stage(files: Sequence[Path], folder: Path) -> list[Path]:
    """Put the series' files in a private folder: gunzip gzipped ones, symlink the rest.

    dcm2niix converts a folder, not a file list, and neither converter reads gzip.
    """
    folder.mkdir(parents=True)
    staged = []
    for i, src in enumerate(files):
        src = Path(src)
        dst = folder / f"{i:06d}.dcm"
        with open(src, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        if gzipped:
            with gzip.open(src, "rb") as g, open(dst, "wb") as out:
                shutil.copyfileobj(g, out, length=1 << 20)
        else:
            os.symlink(src.resolve(), dst)
        staged.append(dst)
    return staged


def _dicom2nifti(staged: Sequence[Path], scratch: Path) -> nib.Nifti1Image:
    import dicom2nifti.exceptions as d2n_exc
    import pydicom
    from dicom2nifti.convert_dicom import dicom_array_to_nifti

    datasets = []
    for p in staged:
        ds = pydicom.dcmread(p)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()  # dicom2nifti expects native pixel data; pydicom uses pylibjpeg/gdcm
        datasets.append(ds)
    # dicom2nifti logs every validation step at WARNING; its outcome is reported by our exception.
    d2n_logger = logging.getLogger("dicom2nifti")
    level = d2n_logger.level
    d2n_logger.setLevel(logging.ERROR)
    try:
        # reorient_nifti needs a file to write to (uncompressed: it is scratch, deleted with the temp dir).
        result = dicom_array_to_nifti(datasets, str(scratch), reorient_nifti=True)
    except (d2n_exc.ConversionValidationError, d2n_exc.ConversionError) as err:
        code = str(err.args[0]) if err.args else type(err).__name__
        if code in _REFUSED:
            raise _Refused(f"refused: {_REFUSED[code]} (dicom2nifti {code})") from err
        raise
    finally:
        d2n_logger.setLevel(level)
    img = result["NII"]
    return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)


def dcm2niix_binary() -> str:
    """Path of the dcm2niix executable: the PyPI wheel's copy, else next to the interpreter, else PATH."""
    try:
        import dcm2niix

        candidate = getattr(dcm2niix, "bin", None)
        if candidate and Path(candidate).is_file():
            return str(candidate)
    except ImportError:
        pass
    beside = Path(sys.executable).parent / "dcm2niix"
    if beside.is_file():
        return str(beside)
    found = shutil.which("dcm2niix")
    if found:
        return found
    raise ConversionError("dcm2niix not found; install it with `pip install dcm2niix` or put it on PATH")


def _dcm2niix(folder: Path, out_dir: Path) -> nib.Nifti1Image:
    out_dir.mkdir(parents=True)
    cmd = [dcm2niix_binary(), "-b", "n", "-z", "n", "-v", "0", "-w", "1", "-f", "vol", "-o", str(out_dir), str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_DCM2NIIX_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise ConversionError(f"dcm2niix ran over {_DCM2NIIX_TIMEOUT_S} s") from err
    outputs = sorted(out_dir.glob("*.nii"))
    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    if proc.returncode != 0 or not outputs:
        raise ConversionError(f"dcm2niix exit {proc.returncode}, {len(outputs)} volumes: {tail}")
    if len(outputs) > 1:
        names = ", ".join(o.name for o in outputs)
        raise ConversionError(f"dcm2niix split the series into {len(outputs)} volumes ({names}): echoes/phases?")
    img = nib.load(outputs[0])
    return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)


def _check_grid(affine: np.ndarray) -> None:
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    off = np.abs(axes.T @ axes - np.eye(3)).max()
    if off > 1e-3:
        raise ConversionError(f"refused: sheared voxel grid (axes off-orthogonal by {off:.3g}); gantry tilt?")


@dataclass(frozen=True)
class DicomGrid:
    """Where the DICOM headers put the volume: its 8 corner voxel centres (LPS mm) and voxel size.

    Built from the instances' own ImagePositionPatient / ImageOrientationPatient / PixelSpacing,
    independently of either converter, so a converter that mislays the grid (flipped, shifted,
    wrong slice order or spacing) is caught instead of written.
    """

    corners_lps: tuple[tuple[float, float, float], ...]
    voxel_size: tuple[float, float, float]


def dicom_layout(files: Sequence[Path]) -> tuple[DicomGrid | None, int]:
    """(expected grid, number of volumes) of a series from its own headers.

    The grid is None when the headers cannot say where the voxels go (Siemens mosaics, whose
    position refers to the whole tile; unreadable files; broken stacks, which the converters refuse
    anyway). The volume count lets a 4D series be refused before anything is converted.
    """
    from imaging.dicom import read_file, series_geometry

    infos = [read_file(Path(f)) for f in files]
    if not infos or any(not hasattr(i, "positions") for i in infos):
        return None, 1
    orientations = [o for i in infos for o in i.orientations]
    positions = [p for i in infos for p in i.positions]
    if any(i.mosaic_slices for i in infos):  # one mosaic instance holds one whole volume
        return None, max(len(infos) // max(len(set(positions)), 1), 1)
    if not all(i.has_geometry for i in infos):
        return None, 1
    geometry = series_geometry(orientations, positions)
    if geometry.problem or geometry.n_orientations != 1 or geometry.n_slices < 2:
        return None, geometry.n_volumes
    iop = np.asarray(orientations[0], dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pts = np.asarray(positions, dtype=float)
    along = pts @ normal
    first, last = pts[int(np.argmin(along))], pts[int(np.argmax(along))]
    header = infos[0].header
    row_spacing, col_spacing = header.pixel_spacing  # type: ignore[misc]
    slice_gap = float(np.ptp(along)) / (geometry.n_slices - 1)
    corners = []
    for origin in (first, last):
        for c in (0, header.columns - 1):
            for r in (0, header.rows - 1):
                p = origin + c * col_spacing * row_dir + r * row_spacing * col_dir
                corners.append(tuple(float(v) for v in p))
    grid = DicomGrid(tuple(corners), (float(row_spacing), float(col_spacing), slice_gap))  # type: ignore[arg-type]
    return grid, geometry.n_volumes


def dicom_grid(files: Sequence[Path]) -> DicomGrid | None:
    """Where the series' own headers put its voxel grid (see `dicom_layout`)."""
    return dicom_layout(files)[0]


def _check_against_dicom(
    img: nib.Nifti1Image, expected: DicomGrid | None, tol_mm: float = GEOMETRY_TOLERANCE_MM
) -> None:
    """Raise ConversionError when the volume's grid is not where the DICOM headers put it."""
    if expected is None:
        return
    shape = np.asarray(img.shape[:3])
    idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    ras = nib.affines.apply_affine(img.affine, idx)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    want = np.asarray(expected.corners_lps)
    dist = np.linalg.norm(want[:, None, :] - lps[None, :, :], axis=2).min(axis=1)
    if dist.max() > tol_mm:
        raise ConversionError(
            f"converted grid is not where the DICOM headers put it: a corner is {dist.max():.2f} mm off "
            f"(tolerance {tol_mm} mm)"
        )
    zooms = sorted(float(z) for z in img.header.get_zooms()[:3])
    if not np.allclose(zooms, sorted(expected.voxel_size), rtol=1e-3, atol=1e-3):
        raise ConversionError(
            f"converted voxel size {tuple(round(z, 4) for z in zooms)} mm differs from the DICOM "
            f"{tuple(round(v, 4) for v in sorted(expected.voxel_size))} mm"
        )


def _write_atomic(img: nib.Nifti1Image, out_path: Path) -> None:
    suffix = ".nii.gz" if out_path.name.endswith(".gz") else ".nii"
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def convert_series(files: Sequence[Path], out_path: Path, *, allow_4d: bool = False) -> ConversionResult:
    """Convert one series' DICOM files into a RAS NIfTI at `out_path`, atomically.

    Args:
        files: the series' instance files (plain or gzipped), any order.
        out_path: target ending in .nii.gz or .nii; written via a temp file and os.replace, so a
            killed run never leaves a half-written volume under the final name.
        allow_4d: accept a 4D result (time series, multi-echo). Off by default: the corpus wants 3D
            volumes, and a 4D array passed on as "3D" breaks every later stage.

    Raises:
        ConversionError: with the reason (refused geometry, 4D, both converters failed).
    """
    out_path = Path(out_path)
    if not files:
        raise ConversionError("no files given; pass the SeriesRecord.files of one series")
    if not (out_path.name.endswith(".nii.gz") or out_path.name.endswith(".nii")):
        raise ConversionError(f"output {out_path} must end in .nii.gz or .nii")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    expected, n_volumes = dicom_layout(files)
    if n_volumes > 1 and not allow_4d:
        raise _Refused(
            f"4D series ({n_volumes} volumes at the same slice positions): time series or multi-echo, not one "
            f"3D volume; pass allow_4d=True if that is intended"
        )
    with tempfile.TemporaryDirectory(prefix="mrifoundry-convert-") as tmp:
        try:
            staged = _stage(files, Path(tmp) / "dicom")
        except (OSError, EOFError) as err:  # missing, unreadable or truncated-gzip input
            raise ConversionError(f"cannot stage the input files: {type(err).__name__}: {err}") from err
        failures: list[str] = []
        img = None
        converter = ""
        for name in ("dicom2nifti", "dcm2niix"):
            try:
                if name == "dicom2nifti":
                    raw = _dicom2nifti(staged, Path(tmp) / "dicom2nifti.nii")
                else:
                    raw = _dcm2niix(Path(tmp) / "dicom", Path(tmp) / "out")
                candidate = _finish(raw, allow_4d)
                _check_against_dicom(candidate, expected)
            except _Refused:
                raise
            except Exception as err:  # noqa: BLE001 - any converter failure triggers the next one
                failures.append(f"{name}: {type(err).__name__}: {err}")
                log.info("%s failed (%s)%s", name, err, "; trying dcm2niix" if name == "dicom2nifti" else "")
                continue
            img, converter = candidate, name
            break
        if img is None:
            raise ConversionError(f"both converters failed. {'. '.join(failures)}")
        _write_atomic(img, out_path)
    affine = np.asarray(img.affine, dtype=float)
    return ConversionResult(
        nifti_path=out_path,
        shape=tuple(int(s) for s in img.shape),
        spacing=tuple(float(z) for z in img.header.get_zooms()[: img.ndim]),
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        orientation="".join(nib.aff2axcodes(affine)),
        converter=converter,
    )
