"""Clients send nothing to a socket another uid controls (agent/socket_trust.py), tried with a real second uid.

The squatter runs as ``nobody`` (setpriv) with the system Python: it creates the owner's predictable fallback
directory first, listens there, and reports how many connections it accepted and every byte it received.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534

_SQUATTER = r"""
import os, select, socket, sys
path = sys.argv[1]
if sys.argv[2] == "mkdir":
    os.mkdir(os.path.dirname(path), 0o755)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
print("READY", flush=True)
conns, data = 0, b""
while True:
    ready = select.select([s, sys.stdin], [], [], 60)[0]
    if not ready or sys.stdin in ready:
        break
    c, _ = s.accept()
    conns += 1
    c.settimeout(2)
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    c.close()
print(conns, data.hex(), flush=True)
"""

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run the squatter as another uid (CI is root)")


class Squatter:
    """``nobody`` listening on ``path``; :meth:`finish` returns (connections accepted, bytes received)."""

    def __init__(self, path: Path, mkdir: bool) -> None:
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", _SQUATTER,
             str(path), "mkdir" if mkdir else "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", self.proc.stderr.read() if self.proc.stderr else line

    def finish(self) -> tuple[int, bytes]:
        out, err = self.proc.communicate("", timeout=30)
        conns, data = out.split()[:2] if len(out.split()) == 2 else (out.strip(), "")
        return int(conns), bytes.fromhex(data)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A world-writable sticky directory standing in for /tmp (so the test never touches the real /tmp names)."""
    d = Path(tempfile.mkdtemp(prefix="ka-sq-", dir="/tmp"))
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _unlock(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAGENT_") and k != "XDG_RUNTIME_DIR"}
    env.update(PYTHONPATH=str(REPO), KEYAGENT_PIN="victim-pin-1234", **env_extra)
    return subprocess.run([sys.executable, "-m", "agent", "unlock", *args], env=env, text=True,
                          capture_output=True, timeout=60)


def test_squatted_fallback_directory_gets_no_connection_and_no_pin(shared_tmp: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.paths import socket_path_for

    home = shared_tmp / "victim-home"
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    sock = socket_path_for(home)
    assert sock.parent == shared_tmp / f"keyagent-{os.getuid()}"  # the predictable name the attacker knows
    squatter = Squatter(sock, mkdir=True)
    try:
        assert os.stat(sock.parent).st_uid == NOBODY
        cp = _unlock({"TMPDIR": str(shared_tmp), "KEYAGENT_HOME": str(home)})
        conns, data = squatter.finish()
    finally:
        squatter.kill()
    assert cp.returncode == 1, cp.stderr
    assert "UNTRUSTED_SOCKET" in cp.stderr and str(sock.parent) in cp.stderr and "owned by uid 65534" in cp.stderr
    assert (conns, data) == (0, b"")  # refused before connect(): the squatter never even saw us


def test_foreign_listener_in_a_trusted_directory_receives_nothing(shared_tmp: Path) -> None:
    # The squatter binds in its own directory; the socket file is then moved into a directory we own (as a race
    # between our directory check and connect() could): only SO_PEERCRED can tell the listener is not ours.
    own = Path(tempfile.mkdtemp(prefix="ka-own-", dir="/tmp"))
    try:
        theirs = shared_tmp / "theirs"
        squatter = Squatter(theirs / "agent.sock", mkdir=True)
        try:
            os.rename(theirs / "agent.sock", own / "agent.sock")
            cp = _unlock({}, "--socket", str(own / "agent.sock"))
            conns, data = squatter.finish()
        finally:
            squatter.kill()
    finally:
        shutil.rmtree(own, ignore_errors=True)
    assert cp.returncode == 1, cp.stderr
    assert "UNTRUSTED_SOCKET" in cp.stderr and "runs as uid 65534" in cp.stderr
    assert conns == 1 and data == b""  # connected, checked, closed: not one byte of the PIN


def test_shared_mode_directory_of_the_owner_is_accepted_for_a_named_agent_uid(tmp_path: Path) -> None:
    from agent.socket_trust import UntrustedSocket, check_peer, check_socket_dir

    d = tmp_path / "sock"
    d.mkdir()
    os.chown(d, NOBODY, -1)
    os.chmod(d, 0o711)  # the custody shared mode: others traverse, nobody else writes
    with pytest.raises(UntrustedSocket):
        check_socket_dir(d / "agent.sock", frozenset({os.getuid()}))
    check_socket_dir(d / "agent.sock", frozenset({os.getuid(), NOBODY}))  # KEYAGENT_AGENT_UID=65534
    os.chmod(d, 0o733)
    with pytest.raises(UntrustedSocket, match="mode 0733"):
        check_socket_dir(d / "agent.sock", frozenset({os.getuid(), NOBODY}))
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        check_peer(a, "pair", frozenset({os.getuid()}))
        with pytest.raises(UntrustedSocket):
            check_peer(a, "pair", frozenset({os.getuid() + 1}))
