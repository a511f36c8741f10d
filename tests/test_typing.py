"""The code base stays ``mypy --strict`` clean (type hints everywhere is a project rule, so CI enforces it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy_strict_is_clean_for_agent_and_backends(tmp_path: Path) -> None:
    cp = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "agent", "backends"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "Success" in cp.stdout
