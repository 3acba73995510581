"""Pseudonymizer: keyed, deterministic, no raw identifiers in output, safe key handling."""

from __future__ import annotations

import re
import stat
from datetime import date, timedelta
from pathlib import Path

import pytest

from imaging.deid import KEY_ENV_VAR, Pseudonymizer

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
PATIENT = "d2n_Philips_3T_R571"
STUDY_UID = "1.3.46.670589.11.45053.5.0.19272.2021090212181635000"
SERIES_UID = "1.3.46.670589.11.45053.5.0.8352.2021090213000458288"


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)


def test_formats_and_determinism() -> None:
    p, q = Pseudonymizer(KEY_A), Pseudonymizer(KEY_A)
    assert re.fullmatch(r"sub-[0-9a-f]{16}", p.subject(PATIENT))
    assert re.fullmatch(r"ses-[0-9a-f]{16}", p.study(STUDY_UID))
    assert re.fullmatch(r"ser-[0-9a-f]{16}", p.series(SERIES_UID))
    assert p.subject(PATIENT) == q.subject(PATIENT)
    assert p.study(STUDY_UID) == q.study(STUDY_UID) and p.series(SERIES_UID) == q.series(SERIES_UID)
    assert p.subject(PATIENT) == p.subject(f"  {PATIENT} ")  # DICOM pads values with spaces


def test_key_and_kind_dependent() -> None:
    a, b = Pseudonymizer(KEY_A), Pseudonymizer(KEY_B)
    assert a.subject(PATIENT) != b.subject(PATIENT)
    assert a.series(SERIES_UID) != b.series(SERIES_UID)
    assert a.subject("P1") != a.subject("P2")
    # the same string used as a patient ID and as a study UID must not collide across namespaces
    assert a.subject("X")[4:] != a.study("X")[4:] != a.series("X")[4:]


def test_no_raw_identifier_in_output() -> None:
    p = Pseudonymizer(KEY_A)
    for raw, out in (
        (PATIENT, p.subject(PATIENT)),
        (STUDY_UID, p.study(STUDY_UID)),
        (SERIES_UID, p.series(SERIES_UID)),
    ):
        assert raw not in out
        for piece in re.split(r"[._]", raw):
            if len(piece) >= 5:
                assert piece.lower() not in out
    assert "key" not in repr(p).replace("key=<redacted>", "") and KEY_A.hex() not in repr(p)


def test_date_shift_per_subject() -> None:
    p = Pseudonymizer(KEY_A)
    shifts = {p.date_shift_days(f"patient-{i}") for i in range(200)}
    assert all(-365 <= s <= -1 for s in shifts)
    assert len(shifts) > 100  # spread, not a constant
    s = p.date_shift_days(PATIENT)
    assert p.shift_date(PATIENT, "20210902") == (date(2021, 9, 2) + timedelta(days=s)).isoformat()
    # intervals between one subject's visits are kept
    d1 = date.fromisoformat(p.shift_date(PATIENT, "20210101"))
    d2 = date.fromisoformat(p.shift_date(PATIENT, "20210301"))
    assert (d2 - d1).days == (date(2021, 3, 1) - date(2021, 1, 1)).days
    assert p.shift_date(PATIENT, "2021.09.02") == p.shift_date(PATIENT, "20210902")
    for bad in ("", "   ", "2021", "20211301", "00000000", "abcdefgh"):
        assert p.shift_date(PATIENT, bad) is None


def test_rejects_bad_keys_and_empty_ids() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Pseudonymizer(b"short")
    with pytest.raises(TypeError):
        Pseudonymizer("a string key")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        Pseudonymizer(KEY_A).subject("  ")


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "warehouse" / "deid.key"
    p1 = Pseudonymizer.from_env_or_file(key_file)
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    assert [f.name for f in key_file.parent.iterdir()] == ["deid.key"]  # no temp files left
    content = key_file.read_bytes()
    p2 = Pseudonymizer.from_env_or_file(key_file)
    assert key_file.read_bytes() == content  # reused, not regenerated
    assert p1.subject(PATIENT) == p2.subject(PATIENT)
    other = Pseudonymizer.from_env_or_file(tmp_path / "elsewhere.key")
    assert other.subject(PATIENT) != p1.subject(PATIENT)  # fresh random key


def test_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "deid.key"
    key_file.write_text(KEY_B.hex())
    monkeypatch.setenv(KEY_ENV_VAR, KEY_A.hex())
    assert Pseudonymizer.from_env_or_file(key_file).subject(PATIENT) == Pseudonymizer(KEY_A).subject(PATIENT)
    monkeypatch.delenv(KEY_ENV_VAR)
    assert Pseudonymizer.from_env_or_file(key_file).subject(PATIENT) == Pseudonymizer(KEY_B).subject(PATIENT)
    missing = tmp_path / "never-created.key"
    monkeypatch.setenv(KEY_ENV_VAR, KEY_A.hex())
    Pseudonymizer.from_env_or_file(missing)
    assert not missing.exists()  # with the env key set, no key file is written
    monkeypatch.setenv(KEY_ENV_VAR, "abc")
    with pytest.raises(ValueError, match=KEY_ENV_VAR):
        Pseudonymizer.from_env_or_file(key_file)
