"""The CLI's shared rules (:mod:`agent.cli.common`): which agent a command talks to."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from agent.cli import build_parser
from agent.cli.common import agent_socket
from agent.paths import default_home, socket_path_for
from tests.daemon.agentproc import short_tmpdir


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = short_tmpdir("ka-c-")
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def test_cli_picks_the_agent_from_home_flag_then_keyagent_sock(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp))
    monkeypatch.setenv("KEYAGENT_HOME", str(tmp / "env-home"))
    monkeypatch.setenv("KEYAGENT_SOCK", "/run/from-env.sock")

    def sock_for(*argv: str) -> str:
        args = build_parser().parse_args(list(argv))
        if not hasattr(args, "home"):
            args.home = default_home()
        return agent_socket(args)

    assert sock_for("status") == "/run/from-env.sock"  # only KEYAGENT_SOCK: that agent
    assert sock_for("status", "--home", str(tmp / "other")) == str(socket_path_for(tmp / "other"))
    assert sock_for("--home", str(tmp / "other"), "status") == str(socket_path_for(tmp / "other"))
    assert sock_for("status", "--socket", "/x.sock", "--home", str(tmp / "other")) == "/x.sock"
    monkeypatch.delenv("KEYAGENT_SOCK")
    assert sock_for("status") == str(socket_path_for(tmp / "env-home"))
