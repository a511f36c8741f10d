"""PIN/passphrase sources: files, environment, the TTL cache, and pinentry spoken over Assuan to a real process
(a tiny scripted pinentry, since no display exists in CI)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from backends.errors import BackendConfigError
from backends.pin import PinCache, ask_pinentry, chain_sources, env_source, file_source, read_secret_file

FAKE_PINENTRY = r'''#!{python}
import sys
log = open({log!r}, "a")
def out(s):
    sys.stdout.write(s + "\n"); sys.stdout.flush()
out("OK Pleased to meet you")
for line in sys.stdin:
    line = line.rstrip("\n")
    log.write(line + "\n"); log.flush()
    if line.startswith("GETPIN"):
        if {cancel}:
            out("ERR 83886179 Operation cancelled <Pinentry>")
        else:
            out("D " + {pin!r})
            out("OK")
    elif line == "BYE":
        out("OK closing connection"); break
    else:
        out("OK")
'''


def _fake(tmp_path: Path, pin: str, cancel: bool = False) -> tuple[str, Path]:
    log = tmp_path / "assuan.log"
    prog = tmp_path / "pinentry-fake"
    prog.write_text(FAKE_PINENTRY.format(python=sys.executable, log=str(log), pin=pin, cancel=cancel))
    prog.chmod(0o700)
    return str(prog), log


def test_pinentry_assuan_roundtrip(tmp_path: Path) -> None:
    prog, log = _fake(tmp_path, "12%2534")  # percent-escaped "%" on the wire
    assert ask_pinentry(prog, "token kt-1 (serial 42)\nsecond line", "PIN:") == "12%34"
    sent = log.read_text().splitlines()
    assert sent[0] == "SETDESC token kt-1 (serial 42)%0Asecond line"  # newline escaped, not sent raw
    assert sent[1] == "SETPROMPT PIN:" and sent[2] == "GETPIN" and sent[3] == "BYE"


def test_pinentry_cancel_is_none(tmp_path: Path) -> None:
    prog, _ = _fake(tmp_path, "x", cancel=True)
    assert ask_pinentry(prog, "d") is None


def test_pin_cache_ttl_and_serial_binding() -> None:
    now = [0.0]
    cache = PinCache(60, clock=lambda: now[0])
    cache.put("serialA", "1234")
    assert cache.get("serialA") == "1234"
    assert cache.get("serialB") is None  # never one PIN on two tokens
    now[0] = 59.9
    assert cache.get("serialA") == "1234"
    now[0] = 60.0
    assert cache.get("serialA") is None
    off = PinCache(0, clock=lambda: now[0])
    off.put("s", "1")
    assert off.get("s") is None


def test_secret_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "pin"
    f.write_text("1234\n")
    f.chmod(0o600)
    assert read_secret_file(str(f)) == "1234"
    f.write_text("12 34\r\n")
    assert read_secret_file(str(f)) == "12 34"
    f.chmod(0o640)
    with pytest.raises(BackendConfigError):
        read_secret_file(str(f))
    f.chmod(0o600)
    for bad in (b"", b"\n", b"\xff\xfe", b"x" * 2000):
        f.write_bytes(bad)
        with pytest.raises(BackendConfigError):
            read_secret_file(str(f))
    with pytest.raises(BackendConfigError):
        read_secret_file(str(tmp_path / "missing"))
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_sources_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pp"
    f.write_text("from-file")
    f.chmod(0o600)
    monkeypatch.delenv("KEYAGENT_PIN", raising=False)
    src = chain_sources(None, env_source("KEYAGENT_PIN"), file_source(str(f)))
    assert src("x") == "from-file"
    monkeypatch.setenv("KEYAGENT_PIN", "from-env")
    assert src("x") == "from-env"
    assert chain_sources(env_source("NOPE_NOT_SET"))("x") is None
