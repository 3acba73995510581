"""PNG views of a curated volume: three-plane mosaics, mask contour, registration overlay.

Images are read with nibabel from the warehouse only: every path comes from the manifest, is
resolved (symlinks included) and must stay inside the warehouse directory, so neither a crafted
request nor a tampered manifest row can make the dashboard read another file. Rendered PNGs are
cached under `<warehouse>/reports/dashboard_cache/`, keyed by volume id, view kind and the size and
mtime of the source files, so a re-curated volume is re-rendered and an unchanged one costs a
file read.

Display conventions: images are reoriented to RAS and shown in neurological convention (subject's
left on the viewer's left); rows are sagittal, coronal, axial; physical aspect is preserved, so a
1×1×5 mm series does not look squashed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS: tuple[str, ...] = ("native", "registered", "overlay")
"""native: the converted image; registered: model grid + brain-mask contour; overlay: template edges."""

RENDER_VERSION = "1"
"""Bump when the drawing changes, so cached PNGs from an older renderer are not served."""

CACHE_DIR = Path("reports") / "dashboard_cache"
TILE = 176
COLUMNS = 6
GAP = 2
MASK_RGB = (0, 220, 120)
TEMPLATE_RGB = (255, 60, 60)
FOV_RGB = (255, 210, 0)
# Levels (fraction of the template's robust maximum) whose contours outline the brain and the
# grey/white boundary of the T1w template (tissue intensities ~0.28 CSF, 0.66 GM, 0.88 WM).
TEMPLATE_LEVELS = (0.25, 0.8)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class UnsafePath(PermissionError):
    """A manifest path that points outside the warehouse (absolute, `..`, or a symlink out)."""


class ImageNotAvailable(FileNotFoundError):
    """The volume has no file for this view (not curated yet, deleted, or no template installed)."""


@dataclass(frozen=True)
class VolumeFiles:
    """Warehouse-relative paths of a volume's NIfTI files, as stored in the `volumes` table."""

    native: str | None
    registered: str | None
    mask: str | None
    fov: str | None


def safe_path(root: Path, rel: str | None) -> Path:
    """Resolve a manifest path inside the warehouse, refusing anything that escapes it.

    Raises:
        ImageNotAvailable: the manifest has no path, or the file does not exist.
        UnsafePath: the path is absolute, or resolves (after symlinks) outside `root`.
    """
    if not rel:
        raise ImageNotAvailable("the manifest records no file for this view")
    if os.path.isabs(rel) or "\x00" in rel:
        raise UnsafePath(f"manifest path {rel!r} is not warehouse-relative; re-run curation to rewrite it")
    base = root.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise UnsafePath(f"manifest path {rel!r} leaves the warehouse {base}; refusing to read it")
    if not path.name.endswith((".nii", ".nii.gz")):
        raise UnsafePath(f"manifest path {rel!r} is not a NIfTI file")
    if not path.is_file():
        raise ImageNotAvailable(f"{rel} is missing from the warehouse; re-run curation for this series")
    return path


def _sources(kind: str, files: VolumeFiles) -> tuple[str | None, ...]:
    if kind == "native":
        return (files.native,)
    if kind == "registered":
        return (files.registered, files.mask)
    if kind == "overlay":
        return (files.registered, files.fov)
    raise ValueError(f"image kind {kind!r} is not one of {', '.join(KINDS)}")


def cached_png(root: Path, volume_id: str, kind: str, files: VolumeFiles) -> Path:
    """Path of the PNG for (volume, kind), rendering it first when the cache has no fresh copy.

    Args:
        root: the warehouse directory.
        volume_id: a manifest volume id (it becomes part of a file name, so it is checked here too).
        kind: one of KINDS.
        files: the volume's manifest paths.

    Raises:
        ValueError: unknown kind. UnsafePath / ImageNotAvailable: see `safe_path`; ImageNotAvailable also
            when the file is not a readable NIfTI (truncated gzip, wrong format).
    """
    if not _SAFE_ID.match(volume_id):
        raise UnsafePath(f"volume id {volume_id!r} cannot name a cache file; ids look like vol-0123456789abcdef")
    required, *optional = _sources(kind, files)
    main = safe_path(root, required)
    extras: list[Path | None] = []
    for rel in optional:
        try:
            extras.append(safe_path(root, rel))
        except ImageNotAvailable:
            extras.append(None)  # a missing mask/FOV only drops its contour
    stamp = hashlib.sha256(RENDER_VERSION.encode())
    for p in (main, *extras):
        if p is not None:
            st = p.stat()
            stamp.update(f"{p.relative_to(root.resolve())}:{st.st_size}:{st.st_mtime_ns};".encode())
    out = root / CACHE_DIR / f"{volume_id}-{kind}-{stamp.hexdigest()[:12]}.png"
    if out.is_file():
        return out
    try:
        png = render(kind, main, *extras)
    except (OSError, EOFError, ValueError, zlib.error, _image_file_error()) as err:
        raise ImageNotAvailable(f"{required} could not be read ({type(err).__name__}: {err}); re-run curation") from err
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{volume_id}-{kind}-*.png"):  # renders of older files of this volume
        stale.unlink(missing_ok=True)
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex}.png")
    try:
        tmp.write_bytes(png)
        os.replace(tmp, out)  # concurrent renders of the same view both write complete files
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _image_file_error() -> type[Exception]:
    from nibabel.filebasedimages import ImageFileError

    return ImageFileError


def render(kind: str, main: Path, extra: Path | None = None) -> bytes:
    """Render one view as PNG bytes (see KINDS); `extra` is the mask (registered) or FOV (overlay)."""
    data, zooms, affine = _load(main)
    lo, hi = _window(data)
    gray = np.clip((data - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    contours: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    extent = None
    if kind == "registered" and extra is not None:
        mask = _load(extra)[0] > 0.5
        if mask.shape == data.shape:
            contours.append((mask, MASK_RGB))
            extent = mask if mask.any() else None
    elif kind == "overlay":
        from imaging.templates import template_on_grid

        template = template_on_grid(data.shape, affine)
        if template is not None:
            for level in TEMPLATE_LEVELS:
                contours.append((template >= level, TEMPLATE_RGB))
            extent = template >= TEMPLATE_LEVELS[0]
        if extra is not None:
            fov = _load(extra)[0] > 0.5
            if fov.shape == data.shape:
                contours.append((fov, FOV_RGB))
    if extent is None:
        extent = gray > 0.05
    return _mosaic(gray, zooms, contours, extent)


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Image data reoriented to RAS (first volume of a 4D file), voxel sizes and affine."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    while data.ndim > 3:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageNotAvailable(f"{path.name} has shape {data.shape}; expected a 3D image")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), zooms, img.affine  # type: ignore[return-value]


def _window(data: np.ndarray) -> tuple[float, float]:
    """0.5–99.5 percentile window of the non-background voxels (a subsample is enough)."""
    sample = data[::2, ::2, ::2]
    fg = sample[sample > 0]
    values = fg if fg.size > 100 else sample.ravel()
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:  # a flat image (a mask, a phantom): show it white on black rather than all black
        lo, hi = min(0.0, float(values.min())), float(values.max())
        hi = hi if hi > lo else lo + 1.0
    return lo, hi


def _slice_positions(extent: np.ndarray, axis: int) -> list[int]:
    """COLUMNS slice indices spread over the middle 70% of the content along `axis`."""
    other = tuple(a for a in range(3) if a != axis)
    idx = np.flatnonzero(extent.any(axis=other))
    lo, hi = (int(idx[0]), int(idx[-1])) if idx.size else (0, extent.shape[axis] - 1)
    return [int(round(lo + f * (hi - lo))) for f in np.linspace(0.15, 0.85, COLUMNS)]


def _plane(vol: np.ndarray, axis: int, i: int) -> np.ndarray:
    """One slice as a display array: rows top→bottom = superior→inferior (anterior→posterior axially)."""
    sl = np.take(vol, i, axis=axis)
    return np.flipud(sl.T)


def _pixel_size(zooms: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """(row height, column width) in mm of a display slice cut perpendicular to `axis`."""
    rows_axis, cols_axis = {0: (2, 1), 1: (2, 0), 2: (1, 0)}[axis]
    return zooms[rows_axis], zooms[cols_axis]


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))


def _outline(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a 2D mask (mask minus its 4-neighbour erosion); the image border is not a
    boundary, so a mask that fills the slice (a full field of view) draws no frame."""
    p = np.pad(mask, 1, mode="edge")
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _mosaic(
    gray: np.ndarray,
    zooms: tuple[float, float, float],
    contours: list[tuple[np.ndarray, tuple[int, int, int]]],
    extent: np.ndarray,
) -> bytes:
    from PIL import Image

    canvas = np.zeros((3 * TILE + 2 * GAP, COLUMNS * TILE + (COLUMNS - 1) * GAP, 3), dtype=np.uint8)
    for row, axis in enumerate((0, 1, 2)):
        ph, pw = _pixel_size(zooms, axis)
        for col, i in enumerate(_slice_positions(extent, axis)):
            sl = _plane(gray, axis, i)
            h_mm, w_mm = sl.shape[0] * ph, sl.shape[1] * pw
            scale = TILE / max(h_mm, w_mm)
            size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))  # PIL wants (width, height)
            tile = np.repeat((_resize(sl, size, nearest=False) * 255.0).clip(0, 255).astype(np.uint8)[..., None], 3, 2)
            for mask, rgb in contours:
                edge = _outline(_resize(_plane(mask, axis, i).astype(np.float32), size, nearest=True) > 0.5)
                tile[edge] = rgb
            y0 = row * (TILE + GAP) + (TILE - size[1]) // 2
            x0 = col * (TILE + GAP) + (TILE - size[0]) // 2
            canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = tile
    buf = io.BytesIO()
    Image.fromarray(canvas, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
