"""Benchmark: does per-volume QC catch injected artifacts and leave clean volumes alone? (issue 5)

Clean volumes: the three real NIfTIs in ../shared/data/nifti (t1w_chris, t2w_head, flair_lesions), the
real Philips MPRAGE from ../shared/data/dicom (clean-only, a fourth real false-alarm check), and the
T1w/T2w/FLAIR series of a synthetic export (``SynthConfig.preset("tiny")``: two subjects on two
scanners), converted with ``imaging.convert.convert_series`` as the flow does. The export's one
motion-corrupted series (its generator ghosts the last subject's FLAIR) is scored apart, as a natural
positive, and is neither a clean volume nor a parent of injected copies.

Every case runs the real per-volume path: ``register_to_mni`` → brain mask (deepbet via
``DeepbetBackend``; a synthetic T2w/FLAIR reuses its study's T1w mask with ``mask_from_reference``,
exactly as ``tasks.preprocess.skullstrip_step`` does) → ``compute_metrics`` → ``decide``. A stage that
raises counts as detected: the flow marks that series failed and it never reaches a shard.

Injected artifacts (on the native image, where a scanner makes them; a fixed seed per volume):
    ghosting         motion ghosts along the phase-encode axis (A-P of the axial slices):
                     ``synth.contrast.add_phase_ghosting`` with a 0.5 rad peak phase error (the synthetic
                     export uses 0.7 rad; 0.5 makes ghosts of roughly a quarter of the head's signal).
    noise            Rician noise with σ = 20 % of the head's median intensity (``add_rician_noise``):
                     the T1w GM/WM difference (≈ 30 % of WM) is then about 1.5 σ, so single voxels can
                     no longer be told apart.
    bias             a smooth multiplicative field (``synth.contrast.bias_field``'s random polynomial)
                     scaled so that its (p95 − p5) / median over the head is 0.6: one side of the head
                     about 1.8 times as bright as the other.
    crop             the top 40 % of the axial slices removed (same world position for the rest).
    misregistration  the clean case's registered image and FOV rotated by 20° (pitch, about the grid
                     centre) before stripping and metrics: a registration stuck in a wrong optimum. The
                     similarity and FOV coverage are recomputed on the rotated image with register.py's
                     own functions.

Prints one line per case (decision, reasons, main metrics), then detection rates per artifact (review or
fail or error) and the false-alarm rate on the clean volumes. Decisions are always recomputed from the
metrics with the current ``QCThresholds``, so ``--reuse`` re-scores a previous run in a second.

Usage:
    .venv/bin/python bench/qc_detection.py [--workdir DIR] [--reuse] [--no-real] [--no-synthetic]
        [--artifacts ghosting,noise,bias,crop,misregistration] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from imaging.qc import QCThresholds, compute_metrics, decide, head_mask, inu_spread

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nifti"
REAL_VOLUMES = (("t1w_chris", "T1w"), ("t2w_head", "T2w"), ("flair_lesions", "FLAIR"))
ARTIFACTS = ("ghosting", "noise", "bias", "crop", "misregistration")
GHOST_RAD = 0.5
NOISE_FRACTION = 0.2
BIAS_SPREAD = 0.6
CROP_FRACTION = 0.4
MISREGISTRATION_DEG = 20.0
SHOWN_METRICS = ("snr", "snr_wm", "cnr", "qi1", "inu", "efc", "fber", "wm2max", "similarity", "mask_mni_dice")


@dataclass(frozen=True)
class CleanVolume:
    """A clean parent volume.

    Attributes:
        name: short unique name (file stem or ``synth-<vendor>-<label>``).
        path: native NIfTI.
        contrast: T1w, T2w or FLAIR (template and similarity floor).
        study: volumes of one study share a T1w mask (synthetic only; real volumes are three people).
        natural_artifact: the generator already corrupted it (scored apart, never injected).
        inject: whether artifacts are injected into it (False: a clean-only false-alarm check).
    """

    name: str
    path: Path
    contrast: str
    study: str
    natural_artifact: str = ""
    inject: bool = True


@dataclass(frozen=True)
class Case:
    """One scored case: a volume, what was done to it, and what QC said."""

    volume: str
    contrast: str
    artifact: str
    decision: str
    reasons: tuple[str, ...]
    metrics: dict[str, float]
    seconds: float


# ------------------------------------------------------------------------------------------ inputs


def real_volumes() -> list[CleanVolume]:
    """The three real NIfTIs; a missing file is an error that says where the data should be."""
    out = []
    for stem, contrast in REAL_VOLUMES:
        path = REAL_DATA / f"{stem}.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; the real test data ships beside the checkout (../shared)")
        out.append(CleanVolume(stem, path, contrast, study=stem))
    return out


def philips_mprage(folder: Path) -> CleanVolume:
    """The real Philips 3D T1 MPRAGE (series 1301 of ../shared/data/dicom/philips_flat_folder), converted.

    A fourth real scan for the false-alarm rate only (clean-only: no artifacts injected, to keep the
    benchmark within ten minutes).
    """
    import gzip

    from imaging.convert import convert_series
    from imaging.dicom import scan_source

    source = REAL_DATA.parent / "dicom" / "philips_flat_folder"
    files = sorted(source.glob("*.dcm.gz"))
    if not files:
        raise FileNotFoundError(f"no .dcm.gz files in {source}; the real test data ships beside the checkout")
    native = folder / "philips-mprage.nii.gz"
    if not native.exists():
        flat = folder / "philips_dicom"
        flat.mkdir(parents=True, exist_ok=True)
        for f in files:
            (flat / f.name[: -len(".gz")]).write_bytes(gzip.decompress(f.read_bytes()))
        (series,) = [r for r in scan_source(flat, workers=1).series if r.header.series_number == 1301]
        convert_series(list(series.files), native)
    return CleanVolume("philips-mprage", native, "T1w", study="philips-mprage", inject=False)


def synthetic_volumes(folder: Path) -> list[CleanVolume]:
    """T1w/T2w/FLAIR of a tiny synthetic export, converted to NIfTI as the flow converts them."""
    from imaging.convert import convert_series
    from imaging.dicom import scan_source
    from synth.export import SynthConfig, generate_export

    summary = generate_export(folder / "export", SynthConfig.preset("tiny"))
    truth = {r["SeriesInstanceUID"]: r for r in json.loads(summary.truth_json.read_text())["series"]}
    out = []
    for record in scan_source(summary.dicom_dir, workers=1).series:
        t = truth.get(record.series_uid)
        if t is None or t["role"] not in ("T1w", "T2w", "FLAIR"):
            continue
        vendor = str(t["vendor"]).split()[0].lower()
        name = f"synth-{vendor}-{t['role']}"
        native = folder / "native" / f"{name}.nii.gz"
        if not native.exists():
            convert_series(list(record.files), native)
        ghost = "ghosting (generator)" if t["ghosting"] else ""
        out.append(CleanVolume(name, native, t["role"], study=f"synth-{vendor}", natural_artifact=ghost))
    return out


# ------------------------------------------------------------------------------------------ artifacts


def _axis_of(affine: np.ndarray, letters: str) -> int:
    codes = nib.orientations.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in letters)


def inject_ghosting(data: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Motion ghosts along A-P within axial slices (the usual phase-encode axis of an axial scan)."""
    from synth.contrast import add_phase_ghosting

    s_axis, a_axis = _axis_of(affine, "SI"), _axis_of(affine, "AP")
    r_axis = 3 - s_axis - a_axis
    stack = np.transpose(data, (s_axis, r_axis, a_axis))  # (slices, rows, cols), phase along cols
    ghosted = add_phase_ghosting(np.ascontiguousarray(stack), 2, rng, amplitude_rad=GHOST_RAD)
    return np.transpose(ghosted, np.argsort((s_axis, r_axis, a_axis)))


def inject_noise(data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rician noise with σ = NOISE_FRACTION × the head's median intensity."""
    from synth.contrast import add_rician_noise

    sigma = NOISE_FRACTION * float(np.median(data[head_mask(data)]))
    return add_rician_noise(data.astype(np.float32), sigma, rng)


def inject_bias(data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply by a smooth random field whose (p95 − p5) / median over the head is BIAS_SPREAD.

    The shape is ``synth.contrast.bias_field`` (exp of a random 2nd-order polynomial); its strength is
    found by bisection, so every volume gets the same spread across its own head, whatever its FOV.
    """
    from synth.contrast import bias_field

    head = head_mask(data)
    log_field = np.log(bias_field(data.shape, rng, strength=1.0))
    lo, hi = 0.0, 5.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inu_spread(np.exp(mid * log_field[head])) < BIAS_SPREAD else (lo, mid)
    return (data * np.exp(lo * log_field)).astype(np.float32)


def inject_crop(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the top CROP_FRACTION of the slices along the superior axis; the kept voxels stay in place."""
    axis = _axis_of(affine, "SI")
    n = data.shape[axis]
    keep = int(round(n * (1.0 - CROP_FRACTION)))
    up = nib.orientations.aff2axcodes(affine)[axis] == "S"
    start = 0 if up else n - keep
    index = [slice(None)] * 3
    index[axis] = slice(start, start + keep)
    shift = np.eye(4)
    shift[axis, 3] = start
    return data[tuple(index)], affine @ shift


def _native_variant(clean: CleanVolume, artifact: str, out: Path, seed: int) -> Path:
    """Write the native image with ``artifact`` injected; returns its path."""
    img = nib.load(str(clean.path))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4:
        data = data[..., 0]
    affine = img.affine
    rng = np.random.default_rng(seed)
    if artifact == "ghosting":
        data = inject_ghosting(data, affine, rng)
    elif artifact == "noise":
        data = inject_noise(data, rng)
    elif artifact == "bias":
        data = inject_bias(data, rng)
    elif artifact == "crop":
        data, affine = inject_crop(data, affine)
    elif artifact != "clean":
        raise ValueError(f"unknown artifact {artifact!r}: expected clean or one of {', '.join(ARTIFACTS)}")
    path = out / "native.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


# ------------------------------------------------------------------------------------------ QC path


def _mask(registered: Path, out: Path, reference: Path | None) -> Path:
    from imaging.skullstrip import DeepbetBackend, mask_from_reference

    if reference is not None:
        return mask_from_reference(reference, out / "mask.nii.gz")
    return DeepbetBackend().strip(registered, out / "mask.nii.gz")


def _score(metrics: dict[str, float], clean: CleanVolume, artifact: str, seconds: float) -> Case:
    decision, reasons = decide(metrics, QCThresholds(), contrast=clean.contrast)
    return Case(clean.name, clean.contrast, artifact, decision, reasons, metrics, seconds)


def _error(clean: CleanVolume, artifact: str, err: Exception) -> Case:
    return Case(clean.name, clean.contrast, artifact, "error", (f"{type(err).__name__}: {err}"[:160],), {}, 0.0)


def run_case(clean: CleanVolume, artifact: str, out: Path, reference_mask: Path | None, seed: int) -> Case:
    """Inject ``artifact`` into ``clean`` and run register → mask → metrics → decide in ``out``."""
    from imaging.register import register_to_mni

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        native = _native_variant(clean, artifact, out, seed)
        r = register_to_mni(native, out, contrast=clean.contrast)
        registered = Path(r.registered_path)
        mask = _mask(registered, out, reference_mask)
        metrics = compute_metrics(native, registered, mask, Path(r.fov_path), r.similarity, r.fov_coverage)
    except Exception as err:  # noqa: BLE001 - a stage that refuses the volume is a detection, as in the flow
        return _error(clean, artifact, err)
    return _score(metrics, clean, artifact, time.perf_counter() - t0)


def run_misregistration(clean: CleanVolume, clean_dir: Path, out: Path, reference_mask: Path | None) -> Case:
    """Rotate the clean case's registered image and FOV by MISREGISTRATION_DEG, then mask and score."""
    from scipy import ndimage

    from imaging.register import SIMILARITY_FWHM_MM, TRANSFORM_NAME, similarity_to_template
    from imaging.templates import model_grid_affine, model_grid_brain_mask, model_grid_template

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    reg = nib.load(str(clean_dir / "registered.nii.gz")).get_fdata(dtype=np.float32)
    fov = np.asarray(nib.load(str(clean_dir / "fov.nii.gz")).dataobj) > 0
    axes = (1, 2)  # the A-S plane: a pitch error, the commonest way a head is tilted
    reg = ndimage.rotate(reg, MISREGISTRATION_DEG, axes=axes, reshape=False, order=1, cval=0.0)
    fov = ndimage.rotate(fov.astype(np.float32), MISREGISTRATION_DEG, axes=axes, reshape=False, order=1) >= 0.5
    reg = np.where(fov, reg, 0.0).astype(np.float32)
    brain = np.asarray(model_grid_brain_mask().dataobj) > 0
    template = model_grid_template(clean.contrast).get_fdata(dtype=np.float32)
    similarity = similarity_to_template(reg, template, brain, fov, fwhm_mm=SIMILARITY_FWHM_MM)
    coverage = float((brain & fov).sum() / brain.sum())
    registered, fov_path = out / "registered.nii.gz", out / "fov.nii.gz"
    nib.save(nib.Nifti1Image(reg, model_grid_affine()), str(registered))
    nib.save(nib.Nifti1Image(fov.astype(np.uint8), model_grid_affine()), str(fov_path))
    # The native image and its true affine are unchanged: INU still finds the brain in native space.
    shutil.copyfile(clean_dir / TRANSFORM_NAME, out / TRANSFORM_NAME)
    try:
        mask = _mask(registered, out, reference_mask)
        metrics = compute_metrics(clean.path, registered, mask, fov_path, similarity, coverage)
    except Exception as err:  # noqa: BLE001
        return Case(
            clean.name, clean.contrast, "misregistration", "error", (f"{type(err).__name__}: {err}"[:160],), {}, 0.0
        )
    return _score(metrics, clean, "misregistration", time.perf_counter() - t0)


def _cached(path: Path, clean: CleanVolume, artifact: str) -> Case | None:
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    if raw["decision"] == "error":
        return Case(clean.name, clean.contrast, artifact, "error", tuple(raw["reasons"]), {}, raw["seconds"])
    metrics = {k: (float("nan") if v is None else float(v)) for k, v in raw["metrics"].items()}
    return _score(metrics, clean, artifact, raw["seconds"])


def _store(path: Path, case: Case) -> None:
    row = asdict(case)
    row["metrics"] = {k: (None if not math.isfinite(v) else v) for k, v in case.metrics.items()}
    path.write_text(json.dumps(row, indent=1))


def run_all(volumes: Sequence[CleanVolume], artifacts: Sequence[str], work: Path, reuse: bool) -> list[Case]:
    """Every clean volume, then each artifact on it; T1w first so its mask exists for its study."""
    cases: list[Case] = []
    masks: dict[str, Path] = {}
    order = sorted(volumes, key=lambda v: (v.study, v.contrast != "T1w", v.name))
    for i, vol in enumerate(order):
        synthetic = vol.name.startswith("synth-")
        reference = masks.get(vol.study) if synthetic and vol.contrast != "T1w" else None
        todo = ["clean", *artifacts] if vol.inject and not vol.natural_artifact else ["clean"]
        for artifact in todo:
            out = work / vol.name / artifact
            stored = out / "case.json"
            case = _cached(stored, vol, artifact) if reuse else None
            if case is None:
                if artifact == "misregistration":
                    case = run_misregistration(vol, work / vol.name / "clean", out, reference)
                else:
                    case = run_case(vol, artifact, out, reference, seed=1000 * i + len(cases))
                _store(stored, case)
            if vol.natural_artifact:
                case = replace(case, artifact=vol.natural_artifact)
            cases.append(case)
            print(_line(case), flush=True)
        if vol.contrast == "T1w" and (work / vol.name / "clean" / "mask.nii.gz").exists():
            masks[vol.study] = work / vol.name / "clean" / "mask.nii.gz"
    return cases


# ------------------------------------------------------------------------------------------ report


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "   nan"
    return f"{v:6.3g}"


def _line(c: Case) -> str:
    metrics = " ".join(f"{k}={_fmt(c.metrics.get(k))}" for k in SHOWN_METRICS) if c.metrics else ""
    return f"{c.volume:<22} {c.artifact:<21} {c.decision:<6} {c.seconds:5.1f}s  {metrics}  [{', '.join(c.reasons)}]"


def summary(cases: Sequence[Case]) -> str:
    """Detection rate per artifact (real / synthetic / all) and the false-alarm rate on clean volumes.

    "flagged" = review, fail or a stage error; the last column counts which reasons fired.
    """
    from collections import Counter

    def ratio(group: list[Case]) -> str:
        hit = sum(c.decision != "pass" for c in group)
        return f"{hit}/{len(group)}" if group else "-"

    lines = [f"{'artifact':<22} {'real':>6} {'synth':>6} {'all':>6} {'rate':>5}   reasons (count)"]
    for artifact in dict.fromkeys(c.artifact for c in cases):
        group = [c for c in cases if c.artifact == artifact]
        real = [c for c in group if not c.volume.startswith("synth-")]
        synth = [c for c in group if c.volume.startswith("synth-")]
        rate = sum(c.decision != "pass" for c in group) / len(group)
        reasons = Counter(r if c.decision != "error" else "error" for c in group for r in c.reasons)
        label = "clean (false alarms)" if artifact == "clean" else artifact
        why = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
        lines.append(f"{label:<22} {ratio(real):>6} {ratio(synth):>6} {ratio(group):>6} {rate:5.2f}   {why}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="keep intermediates here (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="re-score cases already in --workdir instead of rerunning")
    p.add_argument("--no-real", action="store_true", help="skip the real volumes (three NIfTIs, the Philips MPRAGE)")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic export")
    p.add_argument("--artifacts", default=",".join(ARTIFACTS), help="comma-separated subset of " + ",".join(ARTIFACTS))
    p.add_argument("--json", type=Path, help="write every case (metrics, decision, reasons) here")
    args = p.parse_args(argv)
    artifacts = [a for a in args.artifacts.split(",") if a]
    unknown = sorted(set(artifacts) - set(ARTIFACTS))
    if unknown:
        p.error(f"unknown artifact(s) {unknown}; choose from {', '.join(ARTIFACTS)}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qc-detection-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        volumes = [] if args.no_real else [*real_volumes(), philips_mprage(work / "dicom")]
        if not args.no_synthetic:
            volumes += synthetic_volumes(work / "synthetic")
        cases = run_all(volumes, artifacts, work / "cases", args.reuse)
    print()
    print(summary(cases))
    t = QCThresholds()
    rules = {k: v for k, v in asdict(t).items() if not k.startswith(("outlier", "min_group", "min_rel"))}
    print(f"\n{len(cases)} cases in {time.perf_counter() - t0:.0f} s; per-volume rules: {rules}")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cases], indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
