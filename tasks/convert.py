"""DICOM series -> one RAS NIfTI volume, with dicom2nifti first and the dcm2niix binary as fallback.

dicom2nifti runs in-process and validates the slice stack (uniform spacing, no gantry tilt, no
missing slices); dcm2niix copes with more vendor quirks. Both are normalised to RAS with
`nib.as_closest_canonical`, because dicom2nifti's "reorient" means LAS: on the XA30 enhanced T1 it
writes LAS with origin x=+100.42 where dcm2niix writes RAS with x=-89.58, the same grid stored
flipped. Comparing outputs therefore always happens in world coordinates.

A stack that is not a regular grid is refused rather than converted: a volume with non-uniform
slice spacing or a sheared (gantry-tilted) grid cannot be described by an orthogonal NIfTI affine,
and silently writing one corrupts every later step (registration, patching) without any error.
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


class ConversionError(Exception):
    """The series cannot be turned into one trustworthy volume; the message says why."""


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
            raise ConversionError(f"refused: {_REFUSED[code]} (dicom2nifti {code})") from err
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
    with tempfile.TemporaryDirectory(prefix="mrifoundry-convert-") as tmp:
        try:
            staged = _stage(files, Path(tmp) / "dicom")
        except (OSError, EOFError) as err:  # missing, unreadable or truncated-gzip input
            raise ConversionError(f"cannot stage the input files: {type(err).__name__}: {err}") from err
        try:
            img, converter = _dicom2nifti(staged, Path(tmp) / "dicom2nifti.nii"), "dicom2nifti"
        except ConversionError:
            raise
        except Exception as err:  # noqa: BLE001 - any dicom2nifti failure triggers the fallback
            first = f"dicom2nifti: {type(err).__name__}: {err}"
            log.info("%s; falling back to dcm2niix", first)
            try:
                img, converter = _dcm2niix(Path(tmp) / "dicom", Path(tmp) / "out"), "dcm2niix"
            except ConversionError as err2:
                raise ConversionError(f"both converters failed. {first}. dcm2niix: {err2}") from err2
        img = nib.as_closest_canonical(img)
        if img.ndim == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if img.ndim > 3 and not allow_4d:
            raise ConversionError(
                f"4D series (shape {tuple(img.shape)}): time series or multi-echo, not one 3D volume; "
                f"pass allow_4d=True if that is intended"
            )
        if img.ndim < 3:
            raise ConversionError(f"{img.ndim}D result (shape {tuple(img.shape)}): not a volume")
        _check_grid(img.affine)
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
