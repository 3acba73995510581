"""The Docker image holds every package the console script can import (no engine here to build it).

Both targets are checked by reading the Dockerfile: each package pyproject installs must be copied
into the image before `pip install .`, or `mrifoundry dashboard` (say) fails only in production.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _targets() -> dict[str, str]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    parts = re.split(r"^FROM .* AS (\w+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _packages() -> set[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {p.rstrip("*") for p in cfg["tool"]["setuptools"]["packages"]["find"]["include"]}


def test_every_installed_package_is_copied_into_each_runtime_image() -> None:
    targets = _targets()
    assert {"cpu", "cuda"} <= set(targets)
    for name in ("cpu", "cuda"):
        copied = set(re.findall(r"^COPY (\w+) \./\1\s*$", targets[name], flags=re.M))
        missing = _packages() - copied
        assert not missing, f"docker/Dockerfile target {name!r} does not COPY {sorted(missing)}"
        assert targets[name].index("COPY") < targets[name].index("pip install --no-deps .")


def test_every_package_the_console_script_reaches_is_installed() -> None:
    top_level = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert top_level == _packages(), "pyproject's packages.find.include and the source tree disagree"
