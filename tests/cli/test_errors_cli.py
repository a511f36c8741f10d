"""One error style everywhere (issue 19, point 7): doctor's own crash, init's errors and an unlock that cannot be
checked come out as ``keyagent: CODE: what happened (fix)`` (JSON with --json), never a traceback, a Python class
name or raw exception text. Real CLI processes, real agents."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.daemon.agentproc import KEYAGENT, PASSPHRASE, AgentFactory
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken

needs_softhsm = pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")

#: What Python leaks when an exception escapes unformatted: a class name before a colon, errno brackets.
_LEAK = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b|\[Errno \d+\]")


def _no_leak(text: str) -> None:
    assert not _LEAK.search(text), text


def test_a_crashing_doctor_check_is_reported_in_the_one_error_style(agents: AgentFactory) -> None:
    a = agents.new()
    key = a.home / "identity.key"
    os.rename(key, a.home / "identity.key.bak")
    os.symlink("identity.key", key)  # a link to itself: stat raises ELOOP inside the identity check
    cp = subprocess.run([*KEYAGENT, "--home", str(a.home), "doctor"], env=a.env, capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 1
    _no_leak(cp.stdout + cp.stderr)
    line = next(ln for ln in cp.stdout.splitlines() if ln.startswith("FAIL") and "identity" in ln)
    assert "CHECK_CRASHED: the check could not finish:" in line and str(key) in line
    assert "Too many levels of symbolic links" in line
    assert "fix: check " + str(key) in cp.stdout  # the fix names the file, not "report a bug"
    js = subprocess.run([*KEYAGENT, "--home", str(a.home), "doctor", "--json"], env=a.env, capture_output=True,
                        text=True, timeout=120)
    doc = json.loads(js.stdout)  # still one JSON document
    crashed = [r for r in doc["results"] if r["code"] == "CHECK_CRASHED"]
    assert [r["check"] for r in crashed] == ["identity"] and crashed[0]["fix"]
    _no_leak(js.stdout + js.stderr)


def test_doctor_input_errors_are_coded(agents: AgentFactory) -> None:
    a = agents.new()
    for argv in (["doctor", "--pin-file", str(a.home / "no-such-pin")], ["doctor", "--check", "no-such-check"]):
        cp = subprocess.run([*KEYAGENT, "--home", str(a.home), *argv], env=a.env, capture_output=True, text=True,
                            timeout=120)
        assert cp.returncode == 2 and cp.stderr.startswith("keyagent: BAD_INPUT: "), cp.stderr
        _no_leak(cp.stderr)
    cp = subprocess.run([*KEYAGENT, "--home", str(a.home), "doctor", "--json", "--check", "no-such-check"],
                        env=a.env, capture_output=True, text=True, timeout=120)
    assert json.loads(cp.stdout)["error"]["code"] == "BAD_INPUT"


def test_init_errors_show_codes_not_class_names(agents: AgentFactory) -> None:
    a = agents.new()  # a home that already holds an identity
    env = dict(a.env, KEYAGENT_PASSPHRASE=PASSPHRASE)
    cases = [
        ["--home", str(a.home), "init", "--backend", "software"],  # the key exists
        ["--home", str(agents.root / "new-a"), "init", "--backend", "pkcs11", "--module", "/nonexistent/p11.so",
         "--token", "label:x"],  # a module that is not there
        ["--home", str(agents.root / "new-b"), "init", "--backend", "pkcs11"],  # missing options
    ]
    for argv in cases:
        cp = subprocess.run([*KEYAGENT, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert cp.returncode != 0, argv
        assert re.match(r"keyagent: [A-Z][A-Z_]+: ", cp.stderr), cp.stderr
        _no_leak(cp.stderr)


@needs_softhsm
def test_init_with_a_wrong_pin_says_pin_incorrect(agents: AgentFactory) -> None:
    with SoftHSMToken() as tok:
        env = dict(tok.env, KEYAGENT_PIN="000000")
        env.pop("KEYAGENT_HOME", None)
        cp = subprocess.run([*KEYAGENT, "--home", str(agents.root / "tok-home"), "init", "--backend", "pkcs11",
                             "--module", tok.module, "--token", f"label:{tok.label}"], env=env,
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode != 0 and cp.stderr.startswith("keyagent: PIN_INCORRECT: "), cp.stderr
        _no_leak(cp.stderr)


def test_unlock_of_an_unlocked_keyring_agent_refuses_any_secret(agents: AgentFactory, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyring-protected key file has no passphrase: `unlock` with whatever was typed must not say
    "agent unlocked" (it would confirm a mistyped secret), and no failure is counted."""
    from backends.home import provision_identity

    xdg = agents.root / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    monkeypatch.setenv("HOME", str(agents.root))
    home = agents.root / "kr-home"
    provision_identity(str(home), "software", use_keyring=True, keyring_backend="keyrings.alt.file.PlaintextKeyring")
    a = agents.new(home=home)
    a.extra_env.update(XDG_DATA_HOME=str(xdg), HOME=str(agents.root))
    a.start(passphrase=None)
    assert json.loads(a.cli("status", "--json").stdout)["state"] == "unlocked"  # the keyring gave the key
    for secret in (b"not-the-secret\n", PASSPHRASE.encode() + b"\n"):
        cp = a.cli("unlock", input=secret)
        err = cp.stderr.decode()
        assert cp.returncode == 1, err
        assert "agent unlocked" not in err and "keyring" in err and "no passphrase to check" in err
        _no_leak(err)
    doc = json.loads(a.cli("status", "--json").stdout)
    assert doc["unlock_failures"] == 0 and doc["state"] == "unlocked"
    # after keyagent lock (no password) the keyring opens the file again: that unlock still works
    assert a.cli("lock").returncode == 0
    assert a.cli("unlock", input=b"x\n").returncode == 0
    assert json.loads(a.cli("status", "--json").stdout)["state"] == "unlocked"


def test_a_phrase_with_a_word_not_in_the_list_is_refused_by_default(agents: AgentFactory) -> None:
    """A one-letter typo in a recovery phrase must not quietly make another identity (exit 0): refused with the
    reason and the way to proceed, nothing created."""
    phrase = " ".join(["abandon"] * 11 + ["abut"]).replace("abandon", "abandonn", 1)  # "abandonn": not a word
    home = agents.root / "typo-phrase"
    pw = agents.root / "pw"
    pw.write_text("a passphrase")
    pw.chmod(0o600)
    env = {k: v for k, v in agents.new().env.items() if not k.startswith("KEYAGENT_")}
    argv = [*KEYAGENT, "--home", str(home), "init", "--backend", "software", "--passphrase-file", str(pw),
            "--scrypt-n", "1024", "--from-phrase"]
    cp = subprocess.run(argv, input=phrase + "\n", env=env, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 2 and cp.stderr.startswith("keyagent: BAD_PHRASE: "), cp.stderr
    assert "--accept-bad-phrase" in cp.stderr and not home.exists()
    _no_leak(cp.stderr)
    assert phrase not in cp.stdout + cp.stderr
