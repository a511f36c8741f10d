"""Where an agent lives (agent/paths.py): the runtime directory, one socket per home, and the client's choice."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.daemon.agentproc import short_tmpdir


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = short_tmpdir("ka-u-")
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def test_runtime_dir_prefers_xdg_and_falls_back_to_tmp(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.paths import runtime_dir, socket_path_for

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp))
    assert runtime_dir() == tmp / "keyagent"
    a, b = socket_path_for(tmp / "home-a"), socket_path_for(tmp / "home-b")
    assert a.parent == b.parent == tmp / "keyagent" and a != b  # one socket per home: agents side by side
    assert socket_path_for(tmp / "home-a" / ".." / "home-a") == a  # the same home, however it is spelled
    assert len(str(socket_path_for("/" + "x" * 200))) < 108 + len(str(tmp))  # the home's length never matters
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp / "missing"))
    assert runtime_dir() == Path(f"/tmp/keyagent-{os.getuid()}")
    monkeypatch.setenv("TMPDIR", str(tmp))  # like ssh-agent's mkdtemp, the fallback honours TMPDIR
    assert runtime_dir() == tmp / f"keyagent-{os.getuid()}"
    monkeypatch.delenv("TMPDIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime_dir() == Path(f"/tmp/keyagent-{os.getuid()}")


def test_client_socket_resolution_order(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.client import resolve_socket
    from agent.paths import socket_path_for

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp))
    monkeypatch.setenv("KEYAGENT_SOCK", "/run/env.sock")
    monkeypatch.setenv("KEYAGENT_HOME", str(tmp / "env-home"))
    assert resolve_socket("/explicit.sock", home=str(tmp / "h")) == "/explicit.sock"
    assert resolve_socket(None, home=str(tmp / "h")) == str(socket_path_for(tmp / "h"))
    assert resolve_socket() == "/run/env.sock"
    monkeypatch.delenv("KEYAGENT_SOCK")
    assert resolve_socket() == str(socket_path_for(tmp / "env-home"))
