"""Shared test fixtures: the real public DICOM/NIfTI test data beside the checkout (../shared/data)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the read-only real test data (see ../shared/data/README.md); always present."""
    assert SHARED_DATA.is_dir(), f"real test data missing at {SHARED_DATA}; it ships beside the checkout"
    return SHARED_DATA


@pytest.fixture(scope="session")
def dicom_data(shared_data: Path) -> Path:
    """../shared/data/dicom: the real vendor exports (Philips, Siemens, GE) with dcm2niix references."""
    return shared_data / "dicom"


@pytest.fixture(scope="session")
def philips_flat_gunzipped(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 662 Philips .dcm.gz files of philips_flat_folder, inflated into one flat tmp folder."""
    out = tmp_path_factory.mktemp("philips_flat_gunzipped")
    for src in sorted((shared_data / "dicom" / "philips_flat_folder").glob("*.dcm.gz")):
        with gzip.open(src, "rb") as g, open(out / src.name[: -len(".gz")], "wb") as f:
            shutil.copyfileobj(g, f)
    return out
