"""``keyagent init --from-phrase`` end to end: the phrase travels only on stdin; it never shows up in the init
process's argv or environment, its output, the home (config, key file, store, audit log, agent log) or the agent's
answers, and neither does the seed or the chat private key. The imported home runs an agent whose ``whoami`` gives
Status's key UID, keys and share link."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator


from agent.core.identity import contact_code
from tests.daemon.agentproc import KEYAGENT, OWNER_SIGNS, REPO, AgentFactory
from tests.helpers.softhsm import SoftHSMToken


def _needles(vector: dict[str, Any]) -> list[bytes]:
    """Every run of two or more consecutive words of the phrase (spaces or any other separator), the seed and the
    chat private key as hex (both cases) and as raw bytes."""
    words = vector["mnemonic"].split()
    out: list[bytes] = []
    for n in range(2, len(words) + 1):
        for i in range(len(words) - n + 1):
            run = words[i:i + n]
            out += [" ".join(run).encode(), "".join(run).encode(), ",".join(run).encode(), "\n".join(run).encode()]
    for hexed in (vector["seed"], vector["derived"]["chat"]["private_key"][2:],
                  vector["derived"]["encryption"]["private_key"][2:]):
        out += [hexed.lower().encode(), hexed.upper().encode(), bytes.fromhex(hexed)]
    return out


def _assert_absent(where: str, data: bytes, needles: list[bytes]) -> None:
    for needle in needles:
        assert needle not in data, f"secret material ({needle[:12]!r}…) found in {where}"


def _home_files(home: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(home.rglob("*")):
        if path.is_file():
            yield str(path), path.read_bytes()


def _env(tok: SoftHSMToken | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAGENT_")}
    env["PYTHONPATH"] = str(REPO)
    if tok is not None:
        env["SOFTHSM2_CONF"] = tok.conf
    return env


def _run_init(args: list[str], phrase: bytes, env: dict[str, str], needles: list[bytes]) -> tuple[int, bytes, bytes]:
    """Start init, check its argv and environment while it waits for the phrase, then feed it and keep checking."""
    proc = subprocess.Popen([*KEYAGENT, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    seen = 0

    def look() -> None:
        nonlocal seen
        try:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return
        if not cmdline:  # a zombie has an empty cmdline
            return
        _assert_absent("the init process's argv", cmdline, needles)
        _assert_absent("the init process's environment", environ, needles)
        assert b"--from-phrase" in cmdline
        seen += 1

    look()
    assert proc.stdin is not None
    proc.stdin.write(phrase)
    proc.stdin.close()
    proc.stdin = None  # communicate() below must not touch it again
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        look()
        time.sleep(0.005)
    out, err = proc.communicate(timeout=10)
    assert seen >= 1
    return proc.returncode, out, err


def test_init_from_phrase_into_softhsm_then_agent_whoami(vectors: dict[str, Any], agents: AgentFactory) -> None:
    vector = vectors["identities"]["abandon_about_empty"]
    needles = _needles(vector)
    chat = vector["chat"]
    with SoftHSMToken() as tok:
        home = agents.root / "imported"
        pin_file = agents.root / "pin"
        pin_file.write_text(tok.pin)
        pin_file.chmod(0o600)
        rc, out, err = _run_init(
            ["--home", str(home), "init", "--backend", "pkcs11", "--module", tok.module, "--token",
             f"label:{tok.label}", "--pin-file", str(pin_file), "--from-phrase", "--phrase-from", "stdin"],
            vector["mnemonic"].encode() + b"\n", _env(tok), needles)
        assert rc == 0, err
        assert vector["key_uid"].encode() in out and chat["public_key_compressed"][2:].encode() in out
        assert b"IMPORTED" in err and b"not \"never extractable\"" in err  # said plainly
        _assert_absent("init's stdout", out, needles)
        _assert_absent("init's stderr", err, needles)

        (home / "agent.json").write_text(json.dumps(OWNER_SIGNS))  # `keyagent sign` below: raw signing is opt-in
        agent = agents.new(home=home)
        agent.extra_env["SOFTHSM2_CONF"] = tok.conf
        agent.extra_env["KEYAGENT_PIN"] = tok.pin
        agent.start(passphrase=None)
        del agent.extra_env["KEYAGENT_PIN"]
        who = agent.cli("whoami", "--json")
        assert who.returncode == 0, who.stderr
        doc = json.loads(who.stdout)
        assert doc["public_key"] == chat["public_key_uncompressed"] and len(doc["public_key"]) == 132
        assert doc["compressed_key"] == chat["compressed_key_zQ3"]
        assert doc["share_link"] == chat["share_url_with_chat_key"]
        assert doc["key_uid"] == vector["key_uid"] and doc["key_uid_origin"] == "recovery_phrase"
        assert doc["installation_id"]
        assert doc["alias"] == chat["alias"] and doc["color_id"] == chat["color_id"]
        assert doc["contact_code_topic"] == chat["contact_code_content_topic"]
        assert doc["contact_code_key"] == "0x" + chat["contact_code_symkey"]
        cc = contact_code(bytes.fromhex(chat["public_key_compressed"][2:]))
        assert cc.sym_key.hex() == chat["contact_code_symkey"]
        for args in (["sign", "11" * 32], ["bundle", "--json"], ["whoami"], ["status", "--json"]):
            cp = agent.cli(*args)
            assert cp.returncode == 0, cp.stderr
            _assert_absent(f"keyagent {args[0]}", cp.stdout + cp.stderr, needles)
        assert agent.cli("stop").returncode == 0 and agent.wait_exit()
        assert (home / "audit.log").exists()
        for path, data in _home_files(home):
            _assert_absent(path, data, needles)
        for path, data in _home_files(Path(tok.dir)):  # SoftHSM keeps private objects encrypted under the PIN
            _assert_absent(path, data, needles[-9:])


def test_init_from_phrase_software_bad_checksum_warns_and_leaks_nothing(vectors: dict[str, Any],
                                                                        agents: AgentFactory) -> None:
    phrase = " ".join(["abandon"] * 12)  # wrong checksum word: Status derives anyway, so do we, with a warning
    from agent.core.identity import CHAT_PATH, ENCRYPTION_PATH, derive_secrets, phrase_to_seed

    _, secrets = derive_secrets(phrase, {"chat": CHAT_PATH, "encryption": ENCRYPTION_PATH})
    vector: dict[str, Any] = {
        "mnemonic": phrase,
        "seed": bytes(phrase_to_seed(phrase)).hex(),
        "derived": {"chat": {"private_key": "0x" + secrets["chat"].hex()},
                    "encryption": {"private_key": "0x" + secrets["encryption"].hex()}},
    }
    needles = _needles(vector)
    home = agents.root / "soft"
    pw = agents.root / "pw"
    pw.write_text("a passphrase")
    pw.chmod(0o600)
    rc, out, err = _run_init(["--home", str(home), "init", "--backend", "software", "--passphrase-file", str(pw),
                              "--scrypt-n", "1024", "--from-phrase"], phrase.encode(), _env(), needles)
    # refused by default (a mistyped word would make another identity), nothing created, the reason said
    assert rc == 2 and b"checksum" in err and b"--accept-bad-phrase" in err and not home.exists(), err
    _assert_absent("init's refusal", out + err, needles)
    rc, out, err = _run_init(["--home", str(home), "init", "--backend", "software", "--passphrase-file", str(pw),
                              "--scrypt-n", "1024", "--from-phrase", "--accept-bad-phrase"], phrase.encode(), _env(),
                             needles)
    assert rc == 0, err
    assert b"chat key: zQ3" in out and b"name: " in out  # what the user compares with Status
    warnings = [line for line in err.splitlines() if b"warning" in line]
    assert len(warnings) == 1 and b"checksum" in warnings[0], err
    assert b"IMPORTED" not in err  # no token: nothing to say about token attributes
    _assert_absent("init's output", out + err, needles)
    for path, data in _home_files(home):
        _assert_absent(path, data, needles)
    cfg = json.loads((home / "config.json").read_text())
    assert cfg["backend"] == "software" and cfg["status"]["key_uid_origin"] == "recovery_phrase"
    # offline whoami (no agent runs for this home) reads the recorded key UID
    cp = subprocess.run([*KEYAGENT, "--home", str(home), "whoami", "--json"],
                        env=dict(_env(), XDG_RUNTIME_DIR=str(agents.root)), capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["key_uid"] == cfg["status"]["key_uid"] and b"no agent running" in cp.stderr


def test_init_from_phrase_refuses_argv_mistakes_and_empty_input(agents: AgentFactory) -> None:
    home = agents.root / "none"
    pw = agents.root / "pw2"
    pw.write_text("a passphrase")
    pw.chmod(0o600)
    base = ["--home", str(home), "init", "--backend", "software", "--passphrase-file", str(pw), "--scrypt-n", "1024",
            "--from-phrase"]
    # the phrase as an argument is not an option: argparse refuses, nothing is created
    cp = subprocess.run([*KEYAGENT, *base, "abandon", "about"], env=_env(), input=b"", capture_output=True,
                        timeout=60)
    assert cp.returncode == 2 and not home.exists()
    cp = subprocess.run([*KEYAGENT, *base, "--phrase-from", "stdin"], env=_env(), input=b"  \n", capture_output=True,
                        timeout=60)
    assert cp.returncode != 0 and len(cp.stderr.splitlines()) == 1 and not (home / "config.json").exists()


def test_init_from_phrase_through_pinentry(vectors: dict[str, Any], agents: AgentFactory, tmp_path: Path) -> None:
    from tests.identity.test_phrase_input import _fake

    vector = vectors["identities"]["abandon_about_empty"]
    script, log = _fake(tmp_path, "ok", phrase=vector["mnemonic"])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pinentry").symlink_to(script)  # found on PATH as "pinentry", as a real one would be
    home = agents.root / "via-pinentry"
    pw = agents.root / "pw3"
    pw.write_text("a passphrase")
    pw.chmod(0o600)
    env = dict(_env(), PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    cp = subprocess.run([*KEYAGENT, "--home", str(home), "init", "--backend", "software", "--passphrase-file",
                         str(pw), "--scrypt-n", "1024", "--from-phrase", "--phrase-from", "pinentry"],
                        env=env, input=b"", capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert json.loads((home / "config.json").read_text())["status"]["key_uid"] == vector["key_uid"]
    assert "GETPIN" in log.read_text()
    _assert_absent("init's output", cp.stdout + cp.stderr, _needles(vector))
