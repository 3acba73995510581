"""Do the frames of a series form one regular slice stack per volume? Slices, volumes, and what is wrong.

Conversion needs one orthogonal affine per volume. Mixed orientations, incomplete volumes, irregular
spacing (a missing slice) and sheared (gantry-tilted) stacks have none, so the scan rejects such a
series as `inconsistent_geometry` with a sentence that says which, instead of letting conversion
fail or produce a distorted volume.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Geometry tolerances. Slice spacing may wobble by float rounding of positions (Philips: 0.9999992 mm)
# but not by a missing slice (100 %); a stack whose slices drift sideways by more than the conversion
# tolerance (1 mm from first to last slice) is sheared (gantry tilt) and has no orthogonal affine.
SPACING_TOLERANCE = 0.05  # relative to the median slice gap
MAX_SHEAR_MM = 1.0
_ORIENTATION_TOLERANCE = 1e-2


@dataclass(frozen=True)
class SeriesGeometry:
    """What the instances' positions say about a series: slices per volume, volumes, and any problem.

    `problem` is a PHI-free sentence when the stack is not one regular grid (mixed orientations,
    varying slice spacing, sheared/gantry-tilted stack, incomplete volumes), else "".
    """

    n_orientations: int
    n_slices: int
    n_volumes: int
    problem: str


def _orientation_clusters(orientations: Iterable[tuple[float, ...]], tol: float = _ORIENTATION_TOLERANCE) -> list:
    reps: list[tuple[float, ...]] = []
    for o in orientations:
        if not any(max(abs(a - b) for a, b in zip(o, r, strict=True)) < tol for r in reps):
            reps.append(o)
    return reps


def series_geometry(
    orientations: Sequence[tuple[float, ...]],
    positions: Sequence[tuple[float, float, float]],
    mosaic_slices: int | None = None,
) -> SeriesGeometry:
    """Check that the frames of a series form regular slice stacks, one per volume.

    Args:
        orientations: every distinct ImageOrientationPatient seen in the series.
        positions: ImagePositionPatient of every frame (instances of a classic series, frames of an
            enhanced one, one per mosaic instance).
        mosaic_slices: slices inside each Siemens mosaic instance (positions are then per volume).
    """
    reps = _orientation_clusters(orientations)
    if len(reps) > 1:
        return SeriesGeometry(len(reps), len(positions), 1, f"{len(reps)} different slice orientations in one series")
    if not reps or not positions:
        return SeriesGeometry(len(reps), mosaic_slices or len(positions), 1, "")
    row, col = reps[0][:3], reps[0][3:]
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    dist = sorted((sum(p[i] * normal[i] for i in range(3)), p) for p in positions)
    # cluster positions that are the same slice (repeated per volume, tiny float jitter)
    clusters: list[list[tuple[float, tuple[float, float, float]]]] = []
    for d, p in dist:
        if clusters and d - clusters[-1][-1][0] < 0.01:
            clusters[-1].append((d, p))
        else:
            clusters.append([(d, p)])
    n_unique = len(clusters)
    counts = Counter(len(c) for c in clusters)
    if mosaic_slices:
        return SeriesGeometry(1, mosaic_slices, len(positions) // max(n_unique, 1) or 1, "")
    if len(counts) > 1:
        few, many = min(counts), max(counts)
        return SeriesGeometry(
            1, n_unique, many, f"{few} images at some slice positions and {many} at others (incomplete volumes)"
        )
    n_volumes = next(iter(counts))
    if n_unique >= 3:
        centres = [sum(d for d, _ in c) / len(c) for c in clusters]
        gaps = [b - a for a, b in zip(centres, centres[1:], strict=False)]
        median = sorted(gaps)[len(gaps) // 2]
        worst = max(abs(g - median) for g in gaps)
        if median <= 0 or worst > SPACING_TOLERANCE * median:
            return SeriesGeometry(
                1,
                n_unique,
                n_volumes,
                f"slice spacing varies from {min(gaps):.3g} to {max(gaps):.3g} mm (missing or irregular slices)",
            )
    if n_unique >= 2:
        first, last = clusters[0][0][1], clusters[-1][0][1]
        step = [last[i] - first[i] for i in range(3)]
        along = sum(step[i] * normal[i] for i in range(3))
        sideways = math.sqrt(max(sum(s * s for s in step) - along * along, 0.0))
        if sideways > MAX_SHEAR_MM:
            angle = math.degrees(math.atan2(sideways, abs(along)))
            return SeriesGeometry(
                1,
                n_unique,
                n_volumes,
                f"slices shift {sideways:.3g} mm sideways across the stack ({angle:.2g} deg): gantry tilt / "
                f"sheared stack",
            )
    return SeriesGeometry(1, n_unique, n_volumes, "")
