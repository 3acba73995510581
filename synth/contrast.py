"""What each MR sequence makes of the tissues, and the imperfections every real scan has.

Intensities are in arbitrary units with white matter near 1 (ADC in 1e-6 mm^2/s). The values are
chosen for the textbook ordering, which is what a sequence classifier and the curation QC look at:
T1w  WM > GM > CSF, fat bright, cortical bone dark, lesions hypointense;
T2w  CSF > GM > WM, lesions bright;
FLAIR  GM > WM, CSF nulled (dark), lesions very bright.
Artifacts (bias field, Rician noise, phase-encode ghosting) are applied on the native acquisition
grid because that is where the scanner creates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from synth.anatomy import N_TISSUE_LABELS, SubjectHead, Tissue


@dataclass(frozen=True)
class Contrast:
    """Signal per tissue for one sequence type.

    Attributes:
        texture: weight of the MNI T1 template's fine detail (negative inverts it, as T2 does).
        noise: Rician noise sigma relative to white matter.
    """

    name: str
    gm: float
    wm: float
    csf: float
    lesion: float
    skull: float
    marrow: float
    fat: float
    skin: float
    muscle: float
    eye: float
    cord: float
    texture: float
    noise: float

    def label_values(self) -> np.ndarray:
        """Signal of each non-brain `Tissue` label (index = label value); brain voxels get 0 here."""
        lut = np.zeros(N_TISSUE_LABELS, dtype=np.float32)
        lut[Tissue.CSF] = self.csf
        lut[Tissue.SKULL] = self.skull
        lut[Tissue.MARROW] = self.marrow
        lut[Tissue.FAT] = self.fat
        lut[Tissue.SKIN] = self.skin
        lut[Tissue.MUSCLE] = self.muscle
        lut[Tissue.EYE] = self.eye
        lut[Tissue.CORD] = self.cord
        return lut


CONTRASTS: dict[str, Contrast] = {
    c.name: c
    for c in (
        Contrast("T1w", 0.62, 1.0, 0.14, 0.42, 0.04, 0.78, 1.15, 0.5, 0.45, 0.1, 0.9, 1.0, 0.025),
        Contrast("T2w", 1.35, 1.0, 2.3, 1.95, 0.04, 0.8, 1.2, 0.55, 0.45, 2.4, 1.05, -0.6, 0.03),
        Contrast("FLAIR", 1.3, 1.0, 0.12, 2.4, 0.04, 0.75, 1.0, 0.5, 0.4, 0.15, 1.0, -0.4, 0.035),
        Contrast("DWI", 1.12, 1.0, 0.18, 1.25, 0.0, 0.05, 0.08, 0.25, 0.3, 0.2, 0.95, 0.0, 0.06),
        Contrast("ADC", 850.0, 740.0, 3000.0, 1150.0, 0.0, 80.0, 60.0, 900.0, 1400.0, 2800.0, 800.0, 0.0, 0.05),
        Contrast("localizer", 0.85, 1.0, 0.45, 0.8, 0.05, 0.8, 1.2, 0.6, 0.55, 0.4, 0.9, 0.3, 0.04),
    )
}


def contrast(name: str) -> Contrast:
    """Look up a contrast by name; ValueError lists the known ones."""
    try:
        return CONTRASTS[name]
    except KeyError:
        raise ValueError(f"unknown contrast {name!r}; known: {', '.join(CONTRASTS)}") from None


def render(head: SubjectHead, con: Contrast, step: int = 1, smooth_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free image of `head` on the reference grid (every `step`-th voxel).

    Args:
        head: the subject.
        con: the sequence's tissue signals.
        step: subsampling of the 1 mm reference grid; low-resolution series (DWI, scouts) use 2.
        smooth_mm: Gaussian sigma in mm, to keep coarse native grids from aliasing the 1 mm edges.

    Returns:
        (image, affine) where affine maps the returned array's voxel indices to MNI RAS mm.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    sl = (slice(None, None, step),) * 3
    gm, wm, csf, les = head.gm[sl], head.wm[sl], head.csf[sl], head.lesion[sl]
    img = gm * np.float32(con.gm) + wm * np.float32(con.wm) + csf * np.float32(con.csf)
    img += les * np.float32(con.lesion)
    if con.texture:
        scale = abs(con.wm) * con.texture
        img += head.texture[sl] * (gm + wm) * np.float32(scale)
    img += con.label_values()[head.labels[sl]]
    sigma = smooth_mm / step
    if sigma > 0.05:
        img = ndi.gaussian_filter(img, sigma, mode="constant", truncate=3.0)
    affine = head.affine @ np.diag([step, step, step, 1.0])
    return img.astype(np.float32, copy=False), affine


def bias_field(shape: tuple[int, int, int], rng: np.random.Generator, strength: float = 0.18) -> np.ndarray:
    """Smooth multiplicative receive-coil bias: exp of a random 2nd-order polynomial over the FOV.

    The polynomial is normalised so that the field spans roughly exp(+-strength) across the grid.
    """
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(0.0, 1.0, size=9).astype(np.float32)
    log_field = c[0] * x + c[1] * y + c[2] * z + 0.5 * (c[3] * x * x + c[4] * y * y + c[5] * z * z)
    log_field = log_field + 0.5 * (c[6] * x * y + c[7] * y * z + c[8] * x * z)
    span = float(np.max(np.abs(log_field))) or 1.0
    return np.exp(log_field * np.float32(strength / span)).astype(np.float32)


def add_rician_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of signal plus complex Gaussian noise: Rician in the head, Rayleigh in the air."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    real = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return np.hypot(real, imag).astype(np.float32)


def add_phase_ghosting(
    volume: np.ndarray, phase_axis: int, rng: np.random.Generator, amplitude_rad: float = 0.7
) -> np.ndarray:
    """Motion-like ghosts: periodic phase errors on k-space lines along the phase-encode axis.

    Each slice's 2D k-space line (one phase-encode step) gets a phase error that varies
    sinusoidally with the line index, as quasi-periodic motion between shots would do; the image
    then shows shifted, fainter copies of the head along the phase-encode direction only.

    Args:
        volume: (slices, rows, cols) magnitude image.
        phase_axis: 1 (phase encoded along columns, DICOM "COL") or 2 (along rows, "ROW").
        rng: random source for the period, phase and jitter.
        amplitude_rad: peak phase error; 0.7 rad gives ghosts around a third of the parent signal.
    """
    if phase_axis not in (1, 2):
        raise ValueError(f"phase_axis must be 1 or 2 (rows/cols of a slice), got {phase_axis}")
    n = volume.shape[phase_axis]
    period = float(rng.uniform(5.0, 9.0))
    offset = float(rng.uniform(0.0, 2.0 * math.pi))
    lines = np.arange(n)
    phase = amplitude_rad * np.sin(2.0 * math.pi * lines / period + offset)
    phase += rng.normal(0.0, 0.1 * amplitude_rad, size=n)
    shape = [1, 1, 1]
    shape[phase_axis] = n
    errors = np.exp(1j * phase).reshape(shape)
    k = np.fft.fft2(volume.astype(np.complex64), axes=(1, 2))
    k = np.fft.ifftshift(np.fft.fftshift(k, axes=phase_axis) * errors, axes=phase_axis)
    return np.abs(np.fft.ifft2(k, axes=(1, 2))).astype(np.float32)
