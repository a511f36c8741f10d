"""The daemon keeps its secrets to itself (agent/daemon/hardening.py): no secret variable in /proc/PID/environ, no core
dumps, not dumpable, and the unlock variable picked by backend kind. Read from outside, as another process would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from agent.client import AgentClient
from tests.daemon.agentproc import KEYAGENT, PASSPHRASE, REPO, AgentFactory, AgentProc

NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]  # uid 0 without capabilities: an ordinary same-uid peer
OTHER_SECRET = "KEYAGENT_LOCK_SECRET"


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _assert_no_secrets(pid: int, *values: str) -> None:
    env = _environ(pid)
    for name in ("KEYAGENT_PIN", "KEYAGENT_PASSPHRASE", OTHER_SECRET):
        assert name.encode() not in env
    for value in values:
        assert value.encode() not in env
    assert b"PATH=" in env  # the rest of the environment is still there: we read the right thing


def _core_limit(pid: int) -> list[str]:
    line = [l for l in Path(f"/proc/{pid}/limits").read_text().splitlines() if l.startswith("Max core file size")]
    return line[0].split()[4:6]


def test_background_agent_gets_the_passphrase_by_pipe_and_keeps_no_secret_variable(agents: AgentFactory) -> None:
    a = agents.new()
    a.extra_env.update(KEYAGENT_PIN="pin-for-the-token-home-0000", **{OTHER_SECRET: "other-secret-1111"})
    a.start()  # KEYAGENT_PASSPHRASE as well: both set, the key-file home must pick the passphrase
    with a.client() as c:
        st = c.status()
        assert st.backend == "software" and st.backend_unlocked
    _assert_no_secrets(a.pid, PASSPHRASE, "pin-for-the-token-home-0000", "other-secret-1111")
    assert _core_limit(a.pid) == ["0", "0"]


def test_foreground_agent_wipes_its_own_environment_block(agents: AgentFactory) -> None:
    a = agents.new()
    sock = str(a.run / "fg.sock")
    env = dict(a.env, KEYAGENT_PASSPHRASE=PASSPHRASE, KEYAGENT_PIN="unused-pin-2222",
               **{OTHER_SECRET: "other-secret-3333"})
    proc = subprocess.Popen([*KEYAGENT, "--home", str(a.home), "start", "-D", "--socket", sock], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_socket(sock, proc)
        with AgentClient(sock) as c:
            assert c.status().backend_unlocked
        _assert_no_secrets(proc.pid, PASSPHRASE, "unused-pin-2222", "other-secret-3333")
        assert _core_limit(proc.pid) == ["0", "0"]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.skipif(os.getuid() != 0, reason="drops capabilities with setpriv (CI runs as root)")
def test_daemon_is_not_dumpable_for_a_same_uid_process(agents: AgentFactory) -> None:
    # Both sides without capabilities, so only the dumpable flag decides whether a same-uid process may read
    # the daemon's memory maps and environment (ptrace access mode READ).
    control = subprocess.Popen([*NO_CAPS, "sleep", "60"])
    try:
        time.sleep(0.2)
        readable = subprocess.run([*NO_CAPS, "cat", f"/proc/{control.pid}/environ"], capture_output=True)
        assert readable.returncode == 0  # the method works: an ordinary same-uid process is readable
    finally:
        control.kill()
        control.wait()
    a = agents.new()
    env = dict(a.env, KEYAGENT_PASSPHRASE=PASSPHRASE)
    cp = subprocess.run([*NO_CAPS, *KEYAGENT, "--home", str(a.home), "start"], env=env, capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    pid = int(cp.stdout.split("KEYAGENT_PID=")[1].split(";")[0])
    try:
        for name in ("environ", "maps"):
            peek = subprocess.run([*NO_CAPS, "cat", f"/proc/{pid}/{name}"], capture_output=True, text=True)
            assert peek.returncode != 0 and "Permission denied" in peek.stderr, name
    finally:
        os.kill(pid, 15)


def _wait_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "agent exited")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise AssertionError("the agent never listened")


def test_token_home_picks_the_pin_when_both_variables_are_set(agents: AgentFactory) -> None:
    from tests.daemon.test_agent_softhsm import _token_agent
    from tests.helpers.softhsm import SoftHSMToken

    with SoftHSMToken() as tok:
        a = _token_agent(agents, tok)
        a.extra_env["KEYAGENT_PIN"] = tok.pin
        a.start()  # with KEYAGENT_PASSPHRASE set too (the software home's): the token home takes the PIN
        with a.client() as c:
            st = c.status()
            assert st.backend == "pkcs11" and st.backend_unlocked
        _assert_no_secrets(a.pid, tok.pin, PASSPHRASE)
        a.kill()


def test_unlock_sends_the_variable_of_the_agents_backend(agents: AgentFactory) -> None:
    a = agents.new()
    a.start(passphrase=None)
    with a.client() as c:
        assert not c.status().backend_unlocked
    a.extra_env.update(KEYAGENT_PIN="not-the-passphrase", KEYAGENT_PASSPHRASE=PASSPHRASE)
    cp = a.cli("unlock")
    assert cp.returncode == 0, cp.stderr
    with a.client() as c:
        assert c.status().backend_unlocked
