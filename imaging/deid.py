"""Keyed pseudonyms and per-subject date shifts: the only way raw identifiers leave ingest.

Pseudonyms are HMAC-SHA256 of the raw identifier under a secret key, so they are stable across runs
(re-running the pipeline maps the same patient to the same subject) but cannot be reversed or
recomputed by anyone without the key: a plain hash of a PatientID could be brute-forced from the
small space of hospital ID formats. Dates are shifted by a per-subject offset derived the same way,
which keeps intervals between one subject's visits intact (PS3.15 Annex E, "Retain Longitudinal
Temporal Information with Modified Dates").
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

log = logging.getLogger("mrifoundry.deid")

KEY_ENV_VAR = "MRIFOUNDRY_DEID_KEY"
MIN_KEY_BYTES = 16
_GENERATED_KEY_BYTES = 32
_HEX_DIGITS = 16


def _decode_key(raw: bytes, origin: str) -> bytes:
    """Key material from an env var or key file: hex text (what we write) or raw bytes."""
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = text
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"de-identification key from {origin} is {len(key)} bytes; need at least {MIN_KEY_BYTES}. "
            f'Generate one with: python -c "import secrets; print(secrets.token_hex(32))"'
        )
    return key


class Pseudonymizer:
    """Maps raw DICOM identifiers to keyed pseudonyms and shifted dates."""

    def __init__(self, key: bytes):
        if not isinstance(key, bytes | bytearray):
            raise TypeError(f"key must be bytes, got {type(key).__name__}; use Pseudonymizer.from_env_or_file")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"key is {len(key)} bytes; need at least {MIN_KEY_BYTES} random bytes")
        self._key = bytes(key)

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        return "Pseudonymizer(key=<redacted>)"

    @classmethod
    def from_env_or_file(cls, key_file: Path, env_var: str = KEY_ENV_VAR) -> Pseudonymizer:
        """Load the key: the env var wins; else the key file; else create the key file.

        A new key is 32 random bytes written as hex with mode 0600. It is written to a temporary file
        and hard-linked into place, so two processes starting at once cannot both create a key: the
        loser of the race reads the winner's key instead of silently using a different one (which
        would split every subject into two pseudonyms).
        """
        env_value = os.environ.get(env_var)
        if env_value:
            return cls(_decode_key(env_value.encode(), f"${env_var}"))
        key_file = Path(key_file)
        if key_file.exists():
            return cls(cls._read_key_file(key_file))
        key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(_GENERATED_KEY_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, key_file)
                log.warning("created de-identification key %s; back it up: losing it changes all pseudonyms", key_file)
            except FileExistsError:
                pass  # another process won the race: use its key
        finally:
            tmp.unlink(missing_ok=True)
        return cls(cls._read_key_file(key_file))

    @staticmethod
    def _read_key_file(key_file: Path) -> bytes:
        mode = stat.S_IMODE(key_file.stat().st_mode)
        if mode & 0o077:
            log.warning("key file %s has mode %o; restrict it with: chmod 600 %s", key_file, mode, key_file)
        return _decode_key(key_file.read_bytes(), str(key_file))

    def _digest(self, kind: str, value: str) -> bytes:
        value = value.strip()
        if not value:
            raise ValueError(
                f"cannot pseudonymise an empty {kind} identifier: every such record would share one "
                f"pseudonym; fall back to another identifier (ingest uses the StudyInstanceUID)"
            )
        return hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).digest()

    def _token(self, kind: str, prefix: str, value: str) -> str:
        return prefix + self._digest(kind, value).hex()[:_HEX_DIGITS]

    def subject(self, patient_id: str) -> str:
        """Subject pseudonym, e.g. "sub-1a2b3c4d5e6f7a8b" (BIDS-style label)."""
        return self._token("subject", "sub-", patient_id)

    def folder(self, relative_dir: str) -> str:
        """Pseudonym of a source folder: PACS exports often name folders after patients or dates."""
        return self._token("folder", "dir-", relative_dir)

    def file(self, relative_path: str) -> str:
        """Pseudonym of a source file (its path under the source root): some exports name files after
        the patient too (``MUELLER_HANS_broken.dcm``)."""
        return self._token("file", "file-", relative_path)

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte secret for one purpose (e.g. sealing the header index), derived from the key."""
        return self._digest("derived-key", purpose)

    def study(self, study_uid: str) -> str:
        return self._token("study", "ses-", study_uid)

    def series(self, series_uid: str) -> str:
        return self._token("series", "ser-", series_uid)

    def date_shift_days(self, patient_id: str) -> int:
        """Per-subject shift in [-365, -1] days: always into the past, never zero."""
        n = int.from_bytes(self._digest("date", patient_id)[:8], "big")
        return -(n % 365) - 1

    def shift_date(self, patient_id: str, yyyymmdd: str) -> str | None:
        """A DICOM DA value shifted by the subject's offset, as ISO "YYYY-MM-DD"; None if empty/invalid.

        Accepts "YYYYMMDD" and the legacy ACR-NEMA "YYYY.MM.DD"; anything else (partial dates,
        placeholders like "00000000") returns None rather than guessing.
        """
        text = (yyyymmdd or "").strip().replace(".", "").replace("-", "")
        if len(text) != 8 or not text.isdigit():
            return None
        try:
            d = date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            return None
        try:
            return (d + timedelta(days=self.date_shift_days(patient_id))).isoformat()
        except OverflowError:
            return None


# --------------------------------------------------------------------------------------------------
# PHI sweep: prove that identifying values of the inputs appear nowhere in the outputs

# The identifiers PS3.15 Annex E's basic profile removes that a curated corpus could leak by accident.
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName")
# Shorter values ("M", "1") would match everywhere by chance and prove nothing.
MIN_PHI_CHARS = 3


def phi_values(files: Iterable[Path]) -> dict[str, set[str]]:
    """Identifying values found in DICOM files, by keyword (non-DICOM files are skipped).

    Person names also contribute their components (family, given name), since an output could hold
    "Regression" without "Test^Regression".
    """
    import gzip

    import pydicom

    found: dict[str, set[str]] = {k: set() for k in PHI_KEYWORDS}
    for path in files:
        try:
            with open(path, "rb") as f:
                head = f.read(2)
                f.seek(0)
                fp = io.BytesIO(gzip.decompress(f.read())) if head == b"\x1f\x8b" else io.BytesIO(f.read())
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=list(PHI_KEYWORDS))
        except Exception:  # noqa: BLE001 - not DICOM (READMEs, NIfTI): nothing to collect
            continue
        for keyword in PHI_KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            if not value:
                continue
            parts = {value, *(p.strip() for p in value.replace("=", "^").split("^"))}
            found[keyword].update(p for p in parts if len(p) >= MIN_PHI_CHARS)
    return found


@dataclass(frozen=True)
class PhiHit:
    keyword: str
    value_length: int  # the value itself is PHI: report where, not what
    where: str


def find_phi(values: dict[str, set[str]], outputs: dict[str, bytes | str]) -> list[PhiHit]:
    """Every place (output name) where one of `values` occurs, as text or raw bytes.

    Case-sensitive. A value with a digit or punctuation in it ("d2n_Philips_3T_R571", "19800501")
    is specific enough to be searched as a plain substring; a purely alphabetic one ("dicom", "NIH")
    must stand as its own word (no letter, digit or underscore beside it), so a patient called
    "dicom" is found in "name=dicom" but not in "dicom2nifti", "not_dicom" or "DICOM data set".

    Args:
        values: keyword -> identifying values, from `phi_values`.
        outputs: name -> content (a dumped manifest table, a file's bytes, a log).
    """
    import re

    patterns = []
    for keyword, vals in values.items():
        for v in sorted(vals):
            body = re.escape(v.encode("utf-8"))
            if v.isalpha():
                body = rb"(?<![A-Za-z0-9_])" + body + rb"(?![A-Za-z0-9_])"
            patterns.append((keyword, len(v), re.compile(body)))
    hits = []
    for where, content in outputs.items():
        blob = content.encode("utf-8", "replace") if isinstance(content, str) else content
        for keyword, length, rx in patterns:
            if rx.search(blob):
                hits.append(PhiHit(keyword, length, where))
    return hits
