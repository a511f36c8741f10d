"""The setup script and package metadata stay quiet (issue 19): an SPDX licence string (a TOML table makes
setuptools print a screenful of deprecation warnings on every install), apt-get update only when installing."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_license_is_an_spdx_string() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"


def test_setup_updates_apt_only_when_installing() -> None:
    lines = (REPO / ".ci" / "setup").read_text().splitlines()
    update = next(i for i, line in enumerate(lines) if "apt-get update" in line)
    install = next(i for i, line in enumerate(lines) if "apt-get install" in line)
    assert install == update + 1  # the same branch: nothing missing, no update
    assert any("command -v npm" in line for line in lines)  # npm on PATH is not "missing"
