"""Why a series or a file is not curated: the reason codes and the rules that pick one.

Every series gets either no reason (it goes on to classification) or one code from `SERIES_REASONS`
with a PHI-free detail; every file that joins no series gets one from `FILE_REASONS`. The codes are
what the manifest stores and the dashboard filters on, so they are a fixed vocabulary.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import pydicom

from imaging.dicom.header import SeriesHeader
from imaging.dicom.tags import (
    _NON_IMAGE_MODALITIES,
    _SECONDARY_CAPTURE_PREFIX,
    ENHANCED_MR_SOP_CLASSES,
    MR_IMAGE_SOP_CLASSES,
    non_image_kind,
)

# Series with fewer slices than this (per volume) cannot make a useful 3D volume (scouts, test slices).
MIN_SLICES = 10

# Rejection reason codes (series level and file level), for the manifest and the dashboard filters.
SERIES_REASONS = (
    "non_image_sop_class",
    "non_mr_modality",
    "missing_tags",
    "localizer",
    "derived",
    "unsupported_codec",
    "too_few_slices",
    "inconsistent_geometry",
)
FILE_REASONS = ("not_dicom", "truncated", "unreadable", "missing_tags", "empty_file", "duplicate")


# Distinctive words match anywhere ("SmartSurvey", "AAHead_Scout"); short ones need word boundaries.
_LOCALIZER_RE = re.compile(
    r"(locali[sz]er|scout|survey|aahead)|(?<![a-z])(3[-_ ]?pl(ane)?|tri[-_ ]?pl(ane)?|three[-_ ]?plane|loc)(?![a-z])"
)
_DERIVED_IMAGE_TYPES = {
    "ADC",
    "EADC",
    "FA",
    "TRACE",
    "TRACEW",
    "CALC_BVALUE",
    "MIP",
    "MNIP",
    "MPR",
    "PROJECTION IMAGE",
    "SUBTRACTION",
    "T1 MAP",
    "T2 MAP",
    "T2_MAP",
    "T1_MAP",
    "R2_MAP",
    "FIELD_MAP",
    "CBF",
    "CBV",
    "MTT",
    "TTP",
    "SUB",
    "COLFA",
    "EXP",
    "MINIP",
    "CPR",
    "FUSED",
}
_DERIVED_DESC_RE = re.compile(
    r"(?<![a-z0-9])(adc|eadc|fa|colfa|color ?fa|trace|tracew|t1 ?map|t2 ?map|mip|mnip|mpr reformat|"
    r"reformat|subtraction)(?![a-z0-9])"
)


@functools.lru_cache(maxsize=64)
def codec_problem(transfer_syntax: str) -> str | None:
    """Why pixel data in this transfer syntax cannot be decoded here, or None when it can.

    pydicom decodes compressed pixel data through optional plugins (pylibjpeg + its libjpeg/openjpeg
    backends, python-gdcm, pillow); a missing plugin is a per-series error that names what to install.
    """
    if not transfer_syntax:
        return None
    try:
        uid = pydicom.uid.UID(transfer_syntax)
        compressed = uid.is_compressed
    except ValueError:
        return f"unknown transfer syntax {transfer_syntax}: no decoder known for it"
    if not compressed:
        return None
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name} ({uid}) has no pixel decoder in pydicom"
    if not decoder.is_available:
        plugins = ", ".join(sorted(decoder.missing_dependencies)) or "a pixel data plugin"
        return (
            f"transfer syntax {uid.name} ({uid}) needs a decoder that is not installed ({plugins}); "
            f"install pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg or python-gdcm"
        )
    return None


def series_rejection(
    header: SeriesHeader,
    n_instances: int,
    n_frames: int,
    has_geometry: bool,
    n_orientations: int = 1,
    *,
    n_slices: int | None = None,
    geometry_problem: str = "",
    transfer_syntaxes: Sequence[str] = (),
) -> tuple[str | None, str]:
    """Reason code (one of `SERIES_REASONS`) and PHI-free detail for a series that must not be
    curated, or (None, "").

    Order matters: the first matching reason is the one reported (a secondary capture of a scout is
    "derived", an SR without geometry is "non_image_sop_class", a three-plane scout is "localizer"
    rather than "inconsistent_geometry").

    Args:
        n_slices: slices per volume when known (mosaic / repeated positions); else derived from
            instance and frame counts.
        geometry_problem: `SeriesGeometry.problem` of the series.
        transfer_syntaxes: the series' transfer syntaxes, to check a decoder exists.
    """
    sop = header.sop_class_uid
    if sop.startswith(_SECONDARY_CAPTURE_PREFIX):
        return "derived", f"Secondary Capture SOP class {sop}"
    if sop not in MR_IMAGE_SOP_CLASSES:
        kind = non_image_kind(sop)
        if kind or header.modality in _NON_IMAGE_MODALITIES:
            return "non_image_sop_class", f"SOP class {sop or '(missing)'} ({kind or header.modality}) has no image"
        if header.modality != "MR":
            return "non_mr_modality", f"modality {header.modality or '(missing)'} with SOP class {sop or '(missing)'}"
        return "non_image_sop_class", f"SOP class {sop or '(missing)'} is not an MR image storage class"
    if header.modality != "MR":
        return "non_mr_modality", f"modality {header.modality or '(missing)'} in an MR SOP class"
    if not has_geometry:
        return "missing_tags", "no ImageOrientationPatient/ImagePositionPatient/PixelSpacing/Rows: no geometry"
    if "LOCALIZER" in header.image_type:
        return "localizer", "ImageType contains LOCALIZER"
    for field_name, text in (("SeriesDescription", header.series_description), ("ProtocolName", header.protocol_name)):
        m = _LOCALIZER_RE.search(text.lower())
        if m:
            return "localizer", f"{field_name} contains localizer keyword '{m.group(0)}'"
    if n_orientations > 1 and n_instances <= 5 * n_orientations:
        return "localizer", f"{n_orientations} slice orientations in {n_instances} images (multi-plane scout)"
    # DERIVED\PRIMARY without a map token is a vendor-corrected reconstruction (GE PURE "PU:",
    # Siemens prescan-normalise, distortion correction): the image radiologists read, with the
    # acquisition's physics. Only SECONDARY images (reformats, screenshots) and computed maps are derived.
    if "SECONDARY" in header.image_type[:2] or header.image_type[:2] == ("DERIVED",):
        return "derived", f"ImageType {'/'.join(header.image_type[:2])} (not an original acquisition)"
    maps = sorted(_DERIVED_IMAGE_TYPES.intersection(header.image_type))
    if maps:
        return "derived", f"ImageType contains {', '.join(maps)} (computed map)"
    m = _DERIVED_DESC_RE.search(header.series_description.lower())
    if m:
        return "derived", f"SeriesDescription contains derived-map keyword '{m.group(1)}'"
    for ts in dict.fromkeys(transfer_syntaxes):
        problem = codec_problem(ts)
        if problem:
            return "unsupported_codec", problem
    if n_slices is None:
        n_slices = (
            n_frames if header.sop_class_uid in ENHANCED_MR_SOP_CLASSES or n_frames > n_instances else n_instances
        )
    if n_slices < MIN_SLICES:
        return "too_few_slices", f"{n_slices} slices per volume < {MIN_SLICES}: too few for a 3D volume"
    if n_orientations > 1:
        return "inconsistent_geometry", f"{n_orientations} different slice orientations in one series"
    if geometry_problem:
        return "inconsistent_geometry", geometry_problem
    return None, ""
