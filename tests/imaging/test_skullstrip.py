"""Skull-strip backends: deepbet on real data, the SynthStrip container call, automatic selection."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging import skullstrip
from imaging.qc import QCThresholds, compute_metrics, decide
from imaging.register import RegistrationResult, register_to_mni
from imaging.skullstrip import (
    ENV_VAR,
    DeepbetBackend,
    SkullStripBackend,
    SkullStripError,
    SynthStripDockerBackend,
    mask_from_reference,
    select_backend,
)
from imaging.templates import MODEL_GRID_SHAPE, model_grid_affine, model_grid_brain_mask, model_grid_voxel_ml
from tests.conftest import SHARED_DATA

T1 = SHARED_DATA / "nifti" / "t1w_chris.nii.gz"
needs_data = pytest.mark.skipif(not T1.exists(), reason=f"real test data {T1} not found")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def registered_t1(tmp_path_factory: pytest.TempPathFactory) -> RegistrationResult:
    return register_to_mni(T1, tmp_path_factory.mktemp("reg"))


@pytest.fixture(scope="module")
def deepbet_t1(registered_t1: RegistrationResult) -> tuple[Path, float]:
    out = Path(registered_t1.registered_path).parent / "mask.nii.gz"
    t0 = time.perf_counter()
    path = DeepbetBackend().strip(Path(registered_t1.registered_path), out)
    return path, time.perf_counter() - t0


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _fake_availability(monkeypatch: pytest.MonkeyPatch, ok: bool, why: str) -> None:
    monkeypatch.setattr(SynthStripDockerBackend, "available", lambda self: (ok, why))


# ------------------------------------------------------------------------------------ deepbet, real


@needs_data
def test_deepbet_mask_on_registered_t1_matches_the_mni_brain(
    registered_t1: RegistrationResult, deepbet_t1: tuple[Path, float]
) -> None:
    path, seconds = deepbet_t1
    mask_img = nib.load(str(path))
    assert mask_img.shape == MODEL_GRID_SHAPE and mask_img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask_img.affine, model_grid_affine())
    mask = np.asarray(mask_img.dataobj) > 0
    mni = np.asarray(model_grid_brain_mask().dataobj) > 0
    volume = mask.sum() * model_grid_voxel_ml()
    score = dice(mask, mni)
    print(f"\ndeepbet on registered T1w: Dice {score:.3f} vs MNI mask, {volume:.0f} ml, {seconds:.1f} s")
    assert score > 0.9
    t = QCThresholds()
    assert t.min_brain_ml <= volume <= t.max_brain_ml


@needs_data
def test_qc_of_the_real_t1_has_no_hard_failure(
    registered_t1: RegistrationResult, deepbet_t1: tuple[Path, float]
) -> None:
    metrics = compute_metrics(
        T1,
        Path(registered_t1.registered_path),
        deepbet_t1[0],
        Path(registered_t1.fov_path),
        registered_t1.similarity,
        registered_t1.fov_coverage,
    )
    print("\nT1w QC:", {k: round(v, 3) for k, v in metrics.items()})
    assert metrics["has_nan"] == 0.0 and metrics["n_slices"] == 188.0
    # t1w_chris is zero-filled outside the head: its noise is not measurable and must not be invented.
    assert metrics["background_zero_fraction"] > 0.9 and np.isnan(metrics["snr"])
    status, reasons = decide(metrics, contrast="T1w")
    assert status == "pass", reasons


@needs_data
def test_deepbet_mask_is_deepbets_own(registered_t1: RegistrationResult, deepbet_t1: tuple[Path, float]) -> None:
    """The faster pipeline (percentiles by selection, normalisation before upsampling, no box finder on the
    model grid) gives deepbet's own ``BrainExtraction.run`` mask, voxel for voxel."""
    img = nib.load(registered_t1.registered_path)
    _, expected, _ = skullstrip.deepbet_extractor().run(img)
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(deepbet_t1[0])).dataobj) > 0, np.asarray(expected.dataobj) > 0
    )


def test_percentiles_by_selection_are_torch_quantile() -> None:
    import torch

    values = torch.from_numpy(np.random.default_rng(1).gamma(2.0, 30.0, 128**3).astype(np.float32))
    ours = skullstrip._quantiles(values, (0.005, 0.5, 0.995))
    assert [float(v) for v in ours] == [float(values.quantile(q)) for q in (0.005, 0.5, 0.995)]


def test_nearest_exact_index_is_torchs_resize() -> None:
    import torch
    import torch.nn.functional as F

    for n_in, n_out in ((96, 256), (108, 256), (256, 95), (17, 5)):
        probe = torch.arange(n_in, dtype=torch.float32)[None, None, :, None, None].expand(1, 1, n_in, 2, 2)
        resized = F.interpolate(probe, (n_out, 2, 2), mode="nearest-exact")[0, 0, :, 0, 0]
        np.testing.assert_array_equal(skullstrip._nearest_exact_index(n_in, n_out), resized.long().numpy())


def test_deepbet_rejects_a_constant_image(tmp_path: Path) -> None:
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), 7.0, np.float32), np.eye(4)), str(path))
    with pytest.raises(SkullStripError, match="constant"):
        DeepbetBackend().strip(path, tmp_path / "mask.nii.gz")


# ------------------------------------------------------------------------------- synthstrip-docker


def test_synthstrip_command_is_exact(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    image = tmp_path / "in" / "registered.nii.gz"
    mask = tmp_path / "out" / "mask.nii.gz"
    cmd = SynthStripDockerBackend().command(image, mask)
    assert cmd == [
        "docker", "run", "--rm", "--network", "none",
        "-u", f"{os.getuid()}:{os.getgid()}",
        "-v", f"{tmp_path / 'in'}:/in:ro",
        "-v", f"{tmp_path / 'out'}:/out",
        "freesurfer/synthstrip:1.6",
        "-i", "/in/registered.nii.gz",
        "-m", "/out/mask.nii.gz",
    ]  # fmt: skip
    assert "freesurfer/synthstrip:1.7" in SynthStripDockerBackend(image="freesurfer/synthstrip:1.7").command(
        image, mask
    )


def test_synthstrip_probe_needs_client_and_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skullstrip.shutil, "which", lambda name: None)
    ok, why = SynthStripDockerBackend().available()
    assert not ok and "not on PATH" in why

    monkeypatch.setattr(skullstrip.shutil, "which", lambda name: "/usr/bin/docker")

    def no_daemon(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args[0], 1, "", "Cannot connect to the Docker daemon")

    monkeypatch.setattr(skullstrip.subprocess, "run", no_daemon)
    assert SynthStripDockerBackend().available() == (False, "Docker engine not reachable")

    def hangs(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(args[0], 5)

    monkeypatch.setattr(skullstrip.subprocess, "run", hangs)
    ok, why = SynthStripDockerBackend().available()
    assert not ok and "did not answer" in why


def test_synthstrip_strip_renames_the_mask_into_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image, mask = tmp_path / "img.nii.gz", tmp_path / "mask.nii.gz"
    image.write_bytes(b"x")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        written = tmp_path / cmd[cmd.index("-m") + 1].removeprefix("/out/")
        written.write_bytes(b"mask")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(skullstrip.subprocess, "run", fake_run)
    assert SynthStripDockerBackend().strip(image, mask) == mask
    assert mask.read_bytes() == b"mask"
    assert calls[0][-1].startswith("/out/.tmp-")  # written under a temporary name first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz", "mask.nii.gz"]

    def fail_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 137, "", "killed")

    monkeypatch.setattr(skullstrip.subprocess, "run", fail_run)
    with pytest.raises(SkullStripError, match="exited 137"):
        SynthStripDockerBackend().strip(image, tmp_path / "other.nii.gz")


# ----------------------------------------------------------------------------------------- selection


def test_auto_falls_back_to_deepbet_here_and_says_why() -> None:
    ok, why = SynthStripDockerBackend().available()
    if ok:
        pytest.skip(f"a Docker engine answers on this machine ({why})")
    backend, reason = select_backend()
    assert isinstance(backend, DeepbetBackend) and backend.name == "deepbet"
    assert reason == f"synthstrip-docker unavailable: {why}; using deepbet"


def test_auto_prefers_synthstrip_when_its_engine_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_availability(monkeypatch, True, "Docker engine 27.0 reachable")
    backend, reason = select_backend("auto")
    assert isinstance(backend, SynthStripDockerBackend) and backend.name == "synthstrip-docker"
    assert "synthstrip-docker" in reason
    _fake_availability(monkeypatch, False, "Docker engine not reachable")
    backend, reason = select_backend("auto")
    assert backend.name == "deepbet"
    assert reason == "synthstrip-docker unavailable: Docker engine not reachable; using deepbet"


def test_explicit_choice_env_var_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_availability(monkeypatch, False, "Docker engine not reachable")
    assert select_backend("deepbet")[0].name == "deepbet"
    with pytest.raises(ValueError, match="synthstrip-docker, deepbet"):
        select_backend("bet2")
    with pytest.raises(SkullStripError, match="Docker engine not reachable"):
        select_backend("synthstrip-docker")

    monkeypatch.setenv(ENV_VAR, "deepbet")
    _fake_availability(monkeypatch, True, "engine up")
    backend, reason = select_backend()  # the variable overrides "auto" ...
    assert backend.name == "deepbet" and ENV_VAR in reason
    assert select_backend("synthstrip-docker")[0].name == "synthstrip-docker"  # ... an explicit name wins
    monkeypatch.setenv(ENV_VAR, "fsl")
    with pytest.raises(ValueError, match=ENV_VAR):
        select_backend()


def test_backends_satisfy_the_protocol() -> None:
    for backend in (DeepbetBackend(), SynthStripDockerBackend()):
        assert isinstance(backend, SkullStripBackend)


# ------------------------------------------------------------------------------ reuse of a T1w mask


def test_mask_from_reference_copies_a_model_grid_mask(tmp_path: Path) -> None:
    ref = np.asarray(model_grid_brain_mask().dataobj).astype(np.uint8)
    src = tmp_path / "t1_mask.nii.gz"
    nib.save(nib.Nifti1Image(ref, model_grid_affine()), str(src))
    out = mask_from_reference(src, tmp_path / "t2" / "mask.nii.gz")
    got = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(got.dataobj), ref)
    np.testing.assert_allclose(got.affine, model_grid_affine())

    native = tmp_path / "native_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)), str(native))
    with pytest.raises(SkullStripError, match="not on the model grid"):
        mask_from_reference(native, tmp_path / "x.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(MODEL_GRID_SHAPE, np.uint8), model_grid_affine()), str(empty))
    with pytest.raises(SkullStripError, match="empty"):
        mask_from_reference(empty, tmp_path / "y.nii.gz")
