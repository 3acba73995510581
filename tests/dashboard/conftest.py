"""A small curated warehouse built without the pipeline: real-looking NIfTIs plus manifest rows.

The registered images are the MNI T1w template on the model grid (plus noise), so mosaics and the
registration overlay look like what a reviewer sees; one volume is shifted by 10 voxels to play a
failed registration. The session fixture builds it once (about 5 s); each test gets its own copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tasks.context import open_warehouse
from warehouse.manifest import now

PHI_SENTINEL = "DOE^JOHN-PHI-SENTINEL"
"""Planted in series_description: no dashboard response may ever contain it."""


@dataclass(frozen=True)
class Vol:
    name: str
    label: str
    model: str
    decision: str
    snr: float
    cnr: float
    brain_ml: float
    fov: float
    sim: float
    date: str
    shift: int = 0

    @property
    def volume_id(self) -> str:
        return "vol-" + hashlib.sha256(self.name.encode()).hexdigest()[:16]

    @property
    def series_key(self) -> str:
        return "ser-" + hashlib.sha256(("s" + self.name).encode()).hexdigest()[:16]

    @property
    def subject_id(self) -> str:
        return "sub-" + hashlib.sha256(("p" + self.name[:-1]).encode()).hexdigest()[:12]


VOLUMES: tuple[Vol, ...] = (
    Vol("a1", "T1w", "Prisma", "pass", 20.0, 3.0, 1200.0, 0.99, 0.95, "2023-03-01"),
    Vol("a2", "T1w", "Prisma", "pass", 21.0, 3.1, 1210.0, 0.98, 0.96, "2023-03-02"),
    Vol("b1", "T1w", "Prisma", "pass", 19.5, 2.9, 1190.0, 0.99, 0.94, "2023-04-10"),
    Vol("b2", "T1w", "Prisma", "pass", 20.5, 3.2, 1205.0, 0.97, 0.95, "2023-04-11"),
    Vol("c1", "T1w", "Prisma", "review", 9.0, 1.5, 1180.0, 0.96, 0.93, "2023-05-20"),
    Vol("c2", "T1w", "Prisma", "fail", 19.0, 3.0, 1195.0, 0.55, 0.60, "2023-05-21", shift=10),
    Vol("d1", "FLAIR", "Ingenia", "pass", 15.0, 2.0, 1150.0, 0.99, 0.90, "2024-01-05"),
    Vol("d2", "FLAIR", "Ingenia", "pass", 15.5, 2.1, 1160.0, 0.98, 0.91, "2024-01-06"),
    Vol("e1", "FLAIR", "Ingenia", "review", 14.5, 1.9, 1400.0, 0.97, 0.89, "2024-02-01"),
)
OUTLIER = VOLUMES[5]  # c2: coverage and similarity far from its group
PASSING = VOLUMES[0]


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype: type = np.float32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))
    return str(path)


def _shift(a: np.ndarray, n: int) -> np.ndarray:
    """Move the image n voxels anteriorly (zero fill): a registration that went wrong."""
    if n == 0:
        return a
    out = np.zeros_like(a)
    out[:, n:, :] = a[:, :-n, :]
    return out


def _build(root: Path) -> Path:
    from imaging.templates import mni_template, model_grid_affine, model_grid_brain_mask, model_grid_template

    ctx = open_warehouse(root)
    rng = np.random.default_rng(0)
    template = model_grid_template("T1w").get_fdata(dtype=np.float32)
    brain = model_grid_brain_mask().get_fdata(dtype=np.float32) > 0.5
    grid = np.asarray(model_grid_affine())
    head_1mm = mni_template()
    native_base = np.asarray(head_1mm.dataobj, dtype=np.float32)[::2, ::2, ::4]  # 2×2×4 mm: anisotropic
    native_affine = head_1mm.affine @ np.diag([2.0, 2.0, 4.0, 1.0])
    series, cls, vols, qcs = [], [], [], []
    for v in VOLUMES:
        d = ctx.derivatives(v.subject_id, v.series_key)
        reg = _shift(template, v.shift) * 800.0 + rng.normal(0, 800.0 / v.snr, template.shape) * brain
        fov = np.ones(template.shape, np.uint8)
        if v.fov < 0.9:
            fov[:, :, : int(template.shape[2] * 0.4)] = 0  # the native scan missed the bottom of the brain
        native = native_base * 800.0 + rng.normal(0, 800.0 / v.snr, native_base.shape) * (native_base > 0)
        paths = {
            "native_path": _save(native, native_affine, d / "native.nii.gz"),
            "registered_path": _save(reg * fov, grid, d / "registered.nii.gz"),
            "mask_path": _save(brain, grid, d / "mask.nii.gz", np.uint8),
            "fov_path": _save(fov, grid, d / "fov.nii.gz", np.uint8),
        }
        series.append(
            {
                "series_key": v.series_key,
                "subject_id": v.subject_id,
                "study_id": "stu-" + v.subject_id[4:],
                "modality": "MR",
                "manufacturer": "Siemens" if v.model == "Prisma" else "Philips",
                "model_name": v.model,
                "field_strength": 3.0,
                "series_description": f"{PHI_SENTINEL} {v.label}",
                "study_date_shifted": v.date,
                "state": "curated",
                "updated_at": now(),
            }
        )
        cls.append(
            {
                "series_key": v.series_key,
                "label": v.label,
                "contrast_enhanced": False,
                "confidence": 0.9,
                "explanation": f"{v.label} because TR/TE fit and a keyword matched",
                "needs_review": v.decision == "review",
                "updated_at": now(),
            }
        )
        vols.append(
            {
                "volume_id": v.volume_id,
                "series_key": v.series_key,
                "subject_id": v.subject_id,
                "study_id": "stu-" + v.subject_id[4:],
                "label": v.label,
                "manufacturer": series[-1]["manufacturer"],
                "model_name": v.model,
                **{k: ctx.rel(Path(p)) for k, p in paths.items()},
                "native_shape": list(native.shape),
                "native_spacing": [2.0, 2.0, 4.0],
                "converter": "synthetic",
                "similarity": v.sim,
                "fov_coverage": v.fov,
                "skullstrip_backend": "synthetic",
                "updated_at": now(),
            }
        )
        qcs.append(
            {
                "volume_id": v.volume_id,
                "decision": v.decision,
                "reasons": ["fov_coverage_low"] if v.decision == "fail" else [],
                "snr": v.snr,
                "cnr": v.cnr,
                "brain_volume_ml": v.brain_ml,
                "fov_coverage": v.fov,
                "similarity": v.sim,
                "metrics_json": json.dumps({"snr": v.snr, "cjv": 0.4 + v.snr / 100.0, "efc": 0.5, "bad": "x"}),
                "updated_at": now(),
            }
        )
    m = ctx.manifest
    m.upsert("series", series)
    m.upsert("classification", cls)
    m.upsert("volumes", vols)
    m.upsert("qc", qcs)
    return root


@pytest.fixture(scope="session")
def _warehouse_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("dashboard_template") / "warehouse")


@pytest.fixture
def warehouse(_warehouse_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the small curated warehouse (tests rate volumes, so they must not share one)."""
    dst = tmp_path / "warehouse"
    shutil.copytree(_warehouse_template, dst)
    return dst
