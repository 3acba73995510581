"""The layering of docs/architecture.md holds: import-linter contracts from pyproject.toml, SQL only in warehouse/."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    n = len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])
    assert n >= 7, f"expected at least the 7 layer contracts in pyproject.toml, found {n}"
    assert f"Contracts: {n} kept, 0 broken" in res.stdout, res.stdout


def test_cli_help_is_fast_and_lists_subcommands():
    """--help must not import prefect/torch: users' scripts call it and it should answer at once."""
    code = (
        "import sys, flows.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('prefect', 'torch', 'ants', 'duckdb') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    for sub in ("demo", "curate", "pretrain", "evaluate", "status", "dashboard", "classify", "model-info"):
        assert sub in res.stdout
    assert "HEAVY []" in res.stdout


# --- Every SQL statement lives in warehouse/ (docs/architecture.md) ---------------------------------

SQL = re.compile(
    r"\b(SELECT|INSERT\s+(OR\s+REPLACE\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|(CREATE|ALTER|DROP)\s+(OR\s+REPLACE\s+)?(TEMP\s+|TEMPORARY\s+)?(TABLE|VIEW|INDEX))\b"
)
"""SQL keywords as the project writes them (upper case): prose in docstrings says "select", not "SELECT"."""

SQL_FREE_PACKAGES = ("flows", "tasks", "imaging", "model", "dashboard", "synth")

SQL_ALLOWED: frozenset[str] = frozenset()
"""Files still being rewritten by another change; each must still hold SQL (else drop it from here)."""


def sql_strings(source: str) -> list[tuple[int, str]]:
    """(line, first line of the literal) of every string literal in ``source`` that holds an SQL statement.

    Tokens, not text: a comment or identifier that mentions SELECT is no SQL. f-strings are one STRING
    token up to Python 3.11 and FSTRING_MIDDLE pieces from 3.12; both are checked.
    """
    kinds = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    hits = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in kinds and SQL.search(tok.string):
            hits.append((tok.start[0], tok.string.strip().splitlines()[0][:80]))
    return hits


def test_sql_detector_finds_statements_in_strings_only():
    src = (
        "# SELECT in a comment is fine\n"
        "SELECT_COLUMNS = ('a',)\n"
        "doc = 'select the best volume from each group'\n"
        "q = f'SELECT * FROM {table} WHERE id = ?'\n"
        "w = '''\n    UPDATE qc SET decision = ?\n'''\n"
        "d = 'DELETE FROM ratings'\n"
        'i = "INSERT OR REPLACE INTO meta VALUES (1)"\n'
    )
    assert [line for line, _ in sql_strings(src)] == [4, 5, 8, 9]


def test_sql_lives_only_in_warehouse():
    found: dict[str, list[tuple[int, str]]] = {}
    for package in SQL_FREE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            hits = sql_strings(path.read_text(encoding="utf-8"))
            if hits:
                found[path.relative_to(ROOT).as_posix()] = hits
    print("files outside warehouse/ with SQL:", sorted(found) or "none")
    offenders = {path: hits for path, hits in found.items() if path not in SQL_ALLOWED}
    assert not offenders, (
        "SQL outside warehouse/: move each statement into a named, typed function with bound parameters in "
        f"warehouse/ and call it: {offenders}"
    )
    stale = sorted(SQL_ALLOWED - set(found))
    assert not stale, f"{stale} no longer hold SQL: remove them from SQL_ALLOWED in tests/test_architecture.py"
