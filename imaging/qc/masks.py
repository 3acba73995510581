"""Where the head and the air are in a native image: Otsu threshold, head mask, background mask.

The air is where noise, ghosting and wrap-around are measured (``imaging.qc.metrics``), so it must
exclude the head, its partial-volume edge and body cavities that open into the image border.
"""

from __future__ import annotations

import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the intensity that maximises the between-class variance of a 2-class split.

    Computed on a ``bins``-bin histogram of the finite values; for a constant input returns that value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("otsu_threshold got no finite values; check the image for NaN/empty data")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    # Every threshold inside an empty gap of the histogram splits identically (a plateau of maxima);
    # take the middle of the first plateau rather than its lower end, which would hug the dark mode.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    run_end = best[0]
    while run_end + 1 < between.size and run_end + 1 in best:
        run_end += 1
    k = (best[0] + run_end) // 2
    # The threshold sits at the upper edge of the last bin assigned to the lower class.
    return float(edges[int(k) + 1])


def head_mask(data: np.ndarray) -> np.ndarray:
    """The head: voxels above the Otsu threshold, largest connected component, holes filled.

    Holes are filled in 3D and then slice by slice along every axis: on T1w the dark skull separates
    the bright scalp from the brain, and where the scalp shell is open (neck, a cut field of view) a
    3D fill alone leaves the whole brain outside the "head" and inside the background. The closing
    runs on an edge-padded copy: with the default zero border its erosion would strip the last two
    slices wherever the head (the neck) leaves the image.
    """
    from scipy import ndimage

    finite = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    mask = finite > otsu_threshold(finite)
    pad = 2  # = the closing's iterations with a 6-neighbour structure
    padded = np.pad(mask, pad, mode="edge")
    padded = ndimage.binary_closing(padded, structure=ndimage.generate_binary_structure(3, 1), iterations=pad)
    mask = padded[pad:-pad, pad:-pad, pad:-pad]
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    filled = mask.copy()
    for axis in range(3):
        for i in range(mask.shape[axis]):
            index = [slice(None)] * 3
            index[axis] = i
            filled[tuple(index)] |= ndimage.binary_fill_holes(mask[tuple(index)])
    return filled


def between_head(head: np.ndarray) -> np.ndarray:
    """Voxels with head on both sides along some image axis (the head's line spans, united over axes).

    A line along an axis is filled from its first to its last head voxel. This closes what hole filling
    cannot: a mouth, pharynx or neck interior that opens into the image border because the field of view
    cuts through the neck (on the Siemens XA30 T1 the whole pharynx counted as air and QI1 read 0.085).
    Air far from the head never lies between two head voxels, so the true background is kept.
    """
    m = np.asarray(head, dtype=bool)
    out = m.copy()
    for axis in range(m.ndim):
        forward = np.maximum.accumulate(m, axis=axis)
        backward = np.flip(np.maximum.accumulate(np.flip(m, axis=axis), axis=axis), axis=axis)
        out |= forward & backward
    return out


def background_mask(
    data: np.ndarray, zooms: tuple[float, ...], *, margin_mm: float = 10.0, head: np.ndarray | None = None
) -> np.ndarray:
    """Air: finite voxels at least ``margin_mm`` away from the head and not between two head voxels.

    The margin keeps out the head's edge, partial-volume voxels and most ghosting close to the scalp;
    ``between_head`` keeps out body cavities open to the image border. ``head`` may be passed when the
    caller already computed ``head_mask(data)`` (it is the slow part).
    """
    from scipy import ndimage

    head = head_mask(data) if head is None else head
    # Physical distance to the head (exact for anisotropic voxels, unlike repeated binary dilation).
    dist = ndimage.distance_transform_edt(~between_head(head), sampling=tuple(float(z) for z in zooms[:3]))
    return (dist > margin_mm) & np.isfinite(data)
