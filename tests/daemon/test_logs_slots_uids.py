"""Logs and connection slots against a second real uid (``nobody``): junk connections, refusals, forged lines,
slot hogging. The agent runs as the suite's uid (root in CI); the attacker's clients run under ``setpriv``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from agent.client import AgentClient
from tests.daemon.agentproc import AgentFactory, AgentProc, short_tmpdir, status_bytes

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run clients as another uid (CI runs as root)")

NOBODY = 65534
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} keyagent\[\d+\] ")

# Runs as nobody: MODE junk N = N connections that each send a zero-length frame and wait for the close;
# MODE status N = one connection sending N status requests; MODE hold N = N connections that each ask for status
# once (answered = holding a slot), print how many were answered, then stay open until stdin closes.
_CLIENT = textwrap.dedent(
    """
    import socket, struct, sys
    path, mode, n, status = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
    def conn():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(path)
        return s
    def answer(s):
        data = b""
        try:
            while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            return None
        return data
    if mode == "junk":
        for _ in range(n):
            s = conn()
            try:
                s.sendall(b"\\0\\0\\0\\0")
                while s.recv(4096):
                    pass
            except OSError:
                pass
            s.close()
        print("done")
    elif mode == "status":
        s = conn()
        ok = 0
        for _ in range(n):
            s.sendall(struct.pack(">I", len(status)) + status)
            ok += answer(s) is not None
        print(ok)
    elif mode == "hold":
        held, answered = [], 0
        for _ in range(n):
            s = conn()
            try:
                s.sendall(struct.pack(">I", len(status)) + status)
            except OSError:
                continue
            if answer(s) is not None:
                answered += 1
            held.append(s)
        print(answered, flush=True)
        sys.stdin.read()
    """
)


def _as_nobody(sock: str, mode: str, n: int, **kw: object) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "/usr/bin/python3", "-c", _CLIENT,
         sock, mode, str(n), status_bytes().hex()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]


def _run_as_nobody(sock: str, mode: str, n: int, timeout: float = 300) -> str:
    p = _as_nobody(sock, mode, n)
    out, err = p.communicate("", timeout=timeout)
    assert p.returncode == 0, err
    return str(out).strip()


@pytest.fixture
def shared() -> Iterator[Path]:
    """A socket directory nobody can reach (the agent makes the socket 0666 when other uids are admitted)."""
    d = short_tmpdir("ka-shared-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _start(agents: AgentFactory, shared: Path, config: dict[str, object], *flags: str) -> tuple[AgentProc, str]:
    a = agents.new(config=config)
    sock = str(shared / "agent.sock")
    a.start("--socket", sock, *flags)
    return a, sock


def _log_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.iterdir() if p.name.startswith(("agent.log", "audit.log")))


def _audit(home: Path) -> list[dict[str, object]]:
    """Every kept audit line, oldest first (rotated files first)."""
    files = sorted(home.glob("audit.log.*"), key=lambda p: -int(p.suffix[1:])) + [home / "audit.log"]
    return [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]


# --- logs --------------------------------------------------------------------------------------------------------


def test_30000_junk_connections_from_an_admitted_uid_leave_the_logs_under_the_cap(agents: AgentFactory,
                                                                                   shared: Path) -> None:
    a, sock = _start(agents, shared, {"refusal_log_window": 5.0}, "--allow-uid", str(NOBODY))
    started = time.monotonic()
    workers = [_as_nobody(sock, "junk", 7500) for _ in range(4)]
    for w in workers:
        out, err = w.communicate("", timeout=600)
        assert w.returncode == 0 and out.strip() == "done", err
    took = time.monotonic() - started
    # what a window held back is reported with the next refusal logged after it: the agent may serve all 30,000
    # within one window, so one more junk connection once it has passed
    time.sleep(max(0.0, 5.0 - took) + 0.2)
    assert _run_as_nobody(sock, "junk", 1) == "done"
    total = _log_bytes(a.home)
    print(f"30000 junk connections in {took:.1f} s; logs {total} bytes")
    assert total < 8 * 1024 * 1024
    junk = [l for l in _audit(a.home) if l.get("uid") == NOBODY and l["type"] == "frame"]
    assert junk and len(junk) < 30000 // 10  # throttled: a burst per window...
    assert sum(int(str(l.get("suppressed", 0))) for l in junk) > 0  # ...and the rest counted, not lost
    with AgentClient(a.sock) as c:  # the owner is served afterwards
        assert c.status().pid == a.pid


def test_refused_connections_are_logged_at_most_a_burst_per_uid(agents: AgentFactory, shared: Path) -> None:
    # admit a gid nobody does not have: the socket is reachable by nobody, SO_PEERCRED refuses it
    a, sock = _start(agents, shared, {"refusal_log_burst": 5}, "--allow-gid", "4242")
    out = _run_as_nobody(sock, "junk", 50)
    assert out == "done"
    denied = [l for l in _audit(a.home) if l.get("result") == "DENIED"]
    assert len(denied) == 5 and all(l["uid"] == NOBODY for l in denied)
    log = (a.home / "agent.log").read_text()
    assert log.count(f"refused uid={NOBODY}") == 5


def test_a_newline_in_an_executable_path_does_not_forge_a_log_line(agents: AgentFactory, shared: Path) -> None:
    a, sock = _start(agents, shared, {}, "--allow-gid", "4242")
    evil = shared / "bin\n2030-01-01 00:00:00,000 keyagent[1] INFO keyagent.server: FORGED owner unlocked"
    evil.mkdir()
    os.chmod(evil, 0o755)
    exe = evil / "python3"
    shutil.copy2(os.path.realpath("/usr/bin/python3"), exe)
    os.chmod(exe, 0o755)
    prefix = sys.base_prefix if Path("/usr/bin/python3").resolve().is_relative_to(sys.base_prefix) else "/usr"
    cp = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(exe), "-c",
         "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(1)", sock],
        capture_output=True, text=True, timeout=60, env={"PYTHONHOME": prefix, "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 0, cp.stderr
    log = (a.home / "agent.log").read_text().splitlines()
    refused = [l for l in log if f"refused uid={NOBODY}" in l]
    assert len(refused) == 1 and "bin\\x0a2030-01-01" in refused[0]
    assert all(RECORD_START.match(l) or l.startswith("  | ") for l in log), log
    assert not any(l.startswith("2030-") for l in log)
    (line,) = [l for l in _audit(a.home) if l.get("result") == "DENIED"]
    assert "FORGED" in str(line["exe"])  # one JSON line, the newline escaped inside it


def test_the_audit_log_keeps_one_line_per_request_within_its_cap(agents: AgentFactory, shared: Path) -> None:
    cap = 64 * 1024
    a, sock = _start(agents, shared, {"audit_log_max_bytes": cap, "audit_log_backups": 1},
                     "--allow-uid", str(NOBODY))
    assert _run_as_nobody(sock, "status", 200) == "200"
    assert len([l for l in _audit(a.home) if l.get("uid") == NOBODY and l["type"] == "status"]) == 200
    assert _run_as_nobody(sock, "status", 3000) == "3000"
    sizes = {p.name: p.stat().st_size for p in a.home.glob("audit.log*")}
    assert set(sizes) == {"audit.log", "audit.log.1"} and max(sizes.values()) <= cap, sizes
    kept = _audit(a.home)
    assert all(l["type"] == "status" and l["uid"] == NOBODY for l in kept)
    assert len(kept) >= (cap // max(len(json.dumps(l)) + 1 for l in kept))  # whole files of whole lines


# --- connection slots --------------------------------------------------------------------------------------------


def _hold(sock: str, n: int) -> tuple["subprocess.Popen[str]", int]:
    p = _as_nobody(sock, "hold", n)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip().isdigit(), p.stderr.read() if p.stderr else ""
    return p, int(line)


def _release(p: "subprocess.Popen[str]") -> None:
    p.communicate("", timeout=60)


@pytest.mark.parametrize("per_uid,expect_held", [(None, 16), (64, 56)])
def test_the_owner_is_served_while_an_allowed_uid_holds_every_slot_it_can(
        agents: AgentFactory, shared: Path, per_uid: int | None, expect_held: int) -> None:
    config: dict[str, object] = {"idle_timeout": 0}  # the attack from the issue: idle holders never time out
    if per_uid is not None:
        config["max_connections_per_uid"] = per_uid
    a, sock = _start(agents, shared, config, "--allow-uid", str(NOBODY))
    holder, held = _hold(sock, 80)
    try:
        assert held == expect_held  # per-uid cap, or every slot but the owner's reserved ones
        for _ in range(3):
            with AgentClient(a.sock, timeout=10) as c:
                st = c.status()
                for _ in range(50):  # the previous owner connection's close is noticed asynchronously
                    if st.connections <= expect_held + 1:
                        break
                    time.sleep(0.05)
                    st = c.status()
            assert st.pid == a.pid and st.connections == expect_held + 1
        owners = [AgentClient(a.sock, timeout=10).connect() for _ in range(8)]
        try:  # the owner may hold every reserved slot at once
            assert all(c.status().pid == a.pid for c in owners)
        finally:
            for c in owners:
                c.close()
    finally:
        _release(holder)
    busy = [l for l in _audit(a.home) if l.get("type") == "connect" and l.get("uid") == NOBODY]
    assert busy and all(l["result"] == "BUSY" for l in busy)


def test_an_idle_connection_is_cut_and_the_client_reconnects(agents: AgentFactory) -> None:
    a = agents.new(config={"idle_timeout": 1.0})
    a.start()
    with AgentClient(a.sock) as c:
        assert c.status().connections == 1
        time.sleep(2.0)  # the agent hangs up on us meanwhile
        assert c.status().connections == 1  # a new connection, not a failure
