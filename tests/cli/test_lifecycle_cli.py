"""The lifecycle commands as a newcomer meets them (issue 19): start/stop with ssh-agent manners, unlock that checks
the secret even when the agent is unlocked, messages that name the way out. Real agents, real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.daemon.agentproc import KEYAGENT, OWNER_SIGNS, PASSPHRASE, AgentFactory, AgentProc
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken

needs_softhsm = pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")


def _token_agent(agents: AgentFactory, tok: SoftHSMToken) -> AgentProc:
    from tests.daemon.test_agent_softhsm import _token_agent as make

    return make(agents, tok)


def test_start_twice_reuses_the_agent_and_stop_prints_unset_lines(agents: AgentFactory) -> None:
    a = agents.new()
    first = a.start()
    again = subprocess.run([*KEYAGENT, "--home", str(a.home), "start"], env=dict(a.env, KEYAGENT_PASSPHRASE=PASSPHRASE),
                           text=True, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout  # the same eval lines: same socket, same pid
    stop = a.cli("stop", "--sh")
    assert stop.returncode == 0, stop.stderr
    assert b"unset KEYAGENT_SOCK" in stop.stdout and b"unset KEYAGENT_PID" in stop.stdout
    assert a.wait_exit()
    # no .sock.lock (or anything else) left in the runtime directory
    assert os.listdir(a.run / "keyagent") == []
    nothing = a.cli("stop")
    assert nothing.returncode == 0 and b"nothing to stop" in nothing.stderr


def test_started_locked_is_said_and_status_agrees(agents: AgentFactory) -> None:
    a = agents.new()
    cp = a.start(passphrase=None)
    assert "started locked: run keyagent unlock" in cp.stderr
    doc = json.loads(a.cli("status", "--json").stdout)
    assert doc["locked"] is True and doc["backend_unlocked"] is False and "keyagent unlock" in doc["state"]
    assert doc["chat_key"].startswith("zQ3")
    cp2 = a.cli("unlock", input=b"")
    assert cp2.returncode == 2
    err = cp2.stderr.decode()
    assert "KEYAGENT_PIN" in err and "--secret-file" in err and "Traceback" not in err
    assert a.cli("unlock", input=PASSPHRASE.encode() + b"\n").returncode == 0
    doc = json.loads(a.cli("status", "--json").stdout)
    assert doc["locked"] is False and doc["state"] == "unlocked"


def test_lock_password_from_a_pipe_and_errors_as_json(agents: AgentFactory) -> None:
    a = agents.new(config=OWNER_SIGNS)  # `sign` must meet the lock, not the raw-signing policy
    a.start()
    cp = a.cli("lock", "--password", input=b"")
    err = cp.stderr.decode()
    assert cp.returncode == 2 and "Traceback" not in err and "GetPassWarning" not in err and "EOFError" not in err
    assert a.cli("lock", "--password", input=b"hunter2\n").returncode == 0
    bad = a.cli("sign", "--json", "00" * 32)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"]["code"] == "LOCKED"
    assert a.cli("unlock", input=b"hunter2\n").returncode == 0


def test_client_commands_name_the_agent_they_fall_back_to_and_create_no_home(agents: AgentFactory) -> None:
    a = agents.new()
    env = {k: v for k, v in a.env.items() if k not in ("KEYAGENT_SOCK", "KEYAGENT_HOME")}
    env["HOME"] = str(agents.root / "user")
    cp = subprocess.run([*KEYAGENT, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 3 and "KEYAGENT_SOCK is unset" in cp.stderr and "default home" in cp.stderr
    typo = agents.root / "typo-home"
    # every command a newcomer types after a typo in --home: none may create the directory (start used to make
    # it for its log before finding no identity there)
    for argv in (["whoami"], ["status"], ["stop"], ["unlock"], ["bundle"], ["doctor"], ["start"]):
        cp = subprocess.run([*KEYAGENT, "--home", str(typo), *argv], env=env, capture_output=True, text=True,
                            timeout=60, input="")
        assert "Traceback" not in cp.stderr, argv
        assert not typo.exists(), argv
    cp = subprocess.run([*KEYAGENT, "--home", str(typo), "start"], env=env, capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 1 and cp.stderr.startswith("keyagent: BAD_CONFIG: ") and "typo" in cp.stderr


def test_unreadable_home_file_is_one_coded_line_not_a_traceback(agents: AgentFactory) -> None:
    """A home that is yours but whose config.json you cannot read (mode 0000, as a non-root uid): start and whoami
    answer one coded line naming the file, not a PermissionError traceback or errno text."""
    a = agents.new()
    os.chmod(agents.root, 0o755)
    for p in (a.home, *a.home.iterdir()):
        os.chown(p, 65534, 65534)
    os.chmod(a.home / "config.json", 0)
    run = agents.root / "nobody-run"
    run.mkdir(mode=0o700)
    os.chown(run, 65534, 65534)
    env = dict(a.env, XDG_RUNTIME_DIR=str(run), KEYAGENT_PASSPHRASE=PASSPHRASE)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *KEYAGENT, "--home", str(a.home)]
    cp = subprocess.run([*as_nobody, "start"], env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.startswith(f"keyagent: PERMISSION_DENIED: {a.home / 'config.json'}: Permission denied"), cp.stderr
    assert "Traceback" not in cp.stderr and "PermissionError" not in cp.stderr
    cp = subprocess.run([*as_nobody, "whoami"], env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 3 and "config.json: Permission denied" in cp.stderr, cp.stderr
    assert "[Errno" not in cp.stderr and "Traceback" not in cp.stderr


def test_version_and_broken_pipe(agents: AgentFactory) -> None:
    cp = subprocess.run([*KEYAGENT, "--version"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and cp.stdout.startswith("keyagent ")
    a = agents.new()
    a.start()
    # the reader is gone before keyagent writes (`true` reads nothing and exits while Python still starts): every
    # write meets a closed pipe, as with `| head` on a long output
    for reader in ("true", "head -c 1"):
        proc = subprocess.run(f"set -o pipefail; {' '.join(KEYAGENT)} inspect-key --no-contact-code "
                              f"zQ3shPyZJnxZK4Bwyx9QsaksNKDYTPmpwPvGSjMYVHoXHeEgB | {reader}",
                              shell=True, executable="/bin/bash", env=dict(a.env, KEYAGENT_SOCK=a.sock),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr  # not a word: the reader left, that is no error


@needs_softhsm
def test_unlock_on_an_unlocked_token_agent_checks_the_pin(agents: AgentFactory) -> None:
    with SoftHSMToken() as tok:
        a = _token_agent(agents, tok)
        a.extra_env["KEYAGENT_PIN"] = tok.pin
        a.start(passphrase=None)
        del a.extra_env["KEYAGENT_PIN"]
        wrong = a.cli("unlock", input=b"000000\n")
        assert wrong.returncode == 1 and b"PIN_INCORRECT" in wrong.stderr, wrong.stderr
        assert json.loads(a.cli("status", "--json").stdout)["unlock_failures"] == 1
        right = a.cli("unlock", input=tok.pin.encode() + b"\n")
        assert right.returncode == 0 and b"agent unlocked" in right.stderr


@needs_softhsm
def test_pin_locked_at_start_names_unlock_force(agents: AgentFactory) -> None:
    with SoftHSMToken() as tok:
        a = _token_agent(agents, tok)
        a.extra_env["KEYAGENT_PIN"] = "999999"
        for _ in range(3):
            assert a.start(passphrase=None, check=False).returncode == 1
        a.extra_env["KEYAGENT_PIN"] = tok.pin
        cp = a.start(passphrase=None, check=False)
        assert cp.returncode == 1 and "PIN_LOCKED" in cp.stderr and "keyagent unlock --force" in cp.stderr
        del a.extra_env["KEYAGENT_PIN"]
        a.start(passphrase=None)
        assert a.cli("unlock", "--force", input=tok.pin.encode() + b"\n").returncode == 0
