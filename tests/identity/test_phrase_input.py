"""read_phrase from a real pipe, a real pseudo-terminal (echo off) and a real pinentry-protocol process."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from agent.identity.phrase_input import MAX_PHRASE_BYTES, PhraseInputError, read_phrase

PHRASE = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
KEY_UID = "0x16f5b9c7657df5e0b45016292d852a36622fb39b63c28017ccf21633270858f1"
REPO = Path(__file__).resolve().parents[2]


def _pipe_with(data: bytes) -> io.BufferedReader:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return os.fdopen(r, "rb")


def test_stdin_pipe_in_a_real_process_derives_the_identity() -> None:
    code = textwrap.dedent(
        """
        import warnings
        from agent.identity.phrase_input import read_phrase
        from agent.core.identity import derive_identity
        buf = read_phrase()
        ident = derive_identity(buf)
        buf[:] = bytes(len(buf))
        print(ident.key_uid, buf == bytearray(len(buf)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], input=(PHRASE + "\n").encode(), capture_output=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == [KEY_UID, "True"]
    assert b"abandon" not in proc.stderr


def test_pipe_and_buffer_sources() -> None:
    with _pipe_with((PHRASE + "\n").encode()) as f:
        got = read_phrase(f)
    assert isinstance(got, bytearray) and got == (PHRASE + "\n").encode()
    assert read_phrase(io.BytesIO(PHRASE.encode())) == PHRASE.encode()  # no fileno: readinto fallback


@pytest.mark.parametrize("data", [b"", b"\n", b"  \t\r\n  "])
def test_empty_input_is_refused(data: bytes) -> None:
    with _pipe_with(data) as f, pytest.raises(PhraseInputError, match="no recovery phrase"):
        read_phrase(f)


def test_oversize_input_is_refused_without_quoting_it() -> None:
    data = b"zebra " * (MAX_PHRASE_BYTES // 6 + 2)
    with _pipe_with(data) as f, pytest.raises(PhraseInputError) as exc:
        read_phrase(f)
    assert "zebra" not in str(exc.value)
    assert read_phrase(io.BytesIO(b"a" * MAX_PHRASE_BYTES)) == b"a" * MAX_PHRASE_BYTES  # the limit itself is fine


def test_terminal_mode_reads_one_line_with_echo_off() -> None:
    master, slave = pty.openpty()
    seen = bytearray()

    def typist() -> None:
        while b"not shown" not in seen:  # wait for the prompt: it is written after echo is turned off
            chunk = os.read(master, 1024)
            if not chunk:
                return
            seen.extend(chunk)
        os.write(master, (PHRASE + "\nleftover\n").encode())

    t = threading.Thread(target=typist)
    t.start()
    try:
        with open(slave, "rb", buffering=0, closefd=False) as tty:
            got = read_phrase(tty, mode="tty")
        t.join(timeout=30)
        os.set_blocking(master, False)
        try:
            while True:
                chunk = os.read(master, 4096)
                if not chunk:
                    break
                seen.extend(chunk)
        except (BlockingIOError, OSError):
            pass
    finally:
        os.close(slave)
        os.close(master)
    assert got == PHRASE.encode()  # stops at the newline, without it
    assert b"abandon" not in seen  # the terminal never echoed the phrase


def test_terminal_mode_needs_a_terminal() -> None:
    with _pipe_with(b"x") as f, pytest.raises(PhraseInputError, match="not a terminal"):
        read_phrase(f, mode="tty")
    with pytest.raises(PhraseInputError, match="not a terminal"):
        read_phrase(io.BytesIO(b"x"), mode="tty")


FAKE_PINENTRY = """#!{python}
# A minimal Assuan peer speaking like pinentry: greets, answers commands, returns a PIN on GETPIN.
import sys
behaviour = {behaviour!r}
with open({log!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
out = sys.stdout
if behaviour == "no-greeting":
    out.write("ERR 1 broken\\n"); out.flush(); sys.exit(0)
if behaviour == "crash":
    sys.exit(3)
out.write("OK Pleased to meet you\\n"); out.flush()
for line in sys.stdin:
    cmd = line.split(" ", 1)[0].strip()
    with open({log!r}, "a") as log:
        log.write(cmd + "\\n")
    if cmd == "GETPIN":
        if behaviour == "cancel":
            out.write("ERR 83886179 Operation cancelled <Pinentry>\\n")
        elif behaviour == "bad-escape":
            out.write("D abc%Z1\\nOK\\n")
        elif behaviour == "empty":
            out.write("OK\\n")
        else:
            out.write("# a comment line\\nS PASSWORD_FROM_CACHE\\nD {phrase_escaped}\\nOK\\n")
    elif cmd == "BYE":
        out.write("OK closing connection\\n"); out.flush(); break
    elif cmd == "OPTION":
        out.write("ERR 83886254 Unknown option\\n")
    else:
        out.write("OK\\n")
    out.flush()
"""


def _fake(tmp_path: Path, behaviour: str, phrase: str = PHRASE) -> tuple[str, Path]:
    log = tmp_path / "pinentry.log"
    escaped = phrase.replace("%", "%25").replace("\n", "%0A")
    script = tmp_path / f"pinentry-{behaviour}"
    script.write_text(
        FAKE_PINENTRY.format(python=sys.executable, behaviour=behaviour, log=str(log), phrase_escaped=escaped)
    )
    script.chmod(0o755)
    return str(script), log


def test_pinentry_returns_the_decoded_phrase(tmp_path: Path) -> None:
    prog, log = _fake(tmp_path, "ok", phrase="abc%def\nghi")
    assert read_phrase(io.BytesIO(b""), mode="pinentry", pinentry_program=prog) == b"abc%def\nghi"
    cmds = log.read_text().split("\n")
    assert "GETPIN" in cmds and "BYE" in cmds and "SETDESC" in cmds


def test_pinentry_is_used_on_a_terminal_with_its_name(tmp_path: Path) -> None:
    prog, log = _fake(tmp_path, "ok")
    master, slave = pty.openpty()
    try:
        with open(slave, "rb", buffering=0, closefd=False) as tty:
            got = read_phrase(tty, pinentry_program=prog)  # auto: a terminal and a pinentry → pinentry
        name = os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)
    assert got == PHRASE.encode()
    assert log.read_text().splitlines()[0] == f"--ttyname {name}"


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("cancel", "cancelled"),
        ("no-greeting", "greet"),
        ("crash", "pinentry"),
        ("bad-escape", "escape"),
        ("empty", "no recovery phrase"),
    ],
)
def test_pinentry_failures_are_typed(tmp_path: Path, behaviour: str, message: str) -> None:
    prog, _ = _fake(tmp_path, behaviour)
    with pytest.raises(PhraseInputError, match=message):
        read_phrase(io.BytesIO(b""), mode="pinentry", pinentry_program=prog)


def test_missing_pinentry_program() -> None:
    with pytest.raises(PhraseInputError, match="cannot start pinentry"):
        read_phrase(io.BytesIO(b""), mode="pinentry", pinentry_program="/nonexistent/pinentry")


def test_read_and_derive_zeroes_the_phrase_even_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.identity import phrase_input

    seen: list[bytearray] = []
    real = phrase_input.read_phrase

    def spy(*a: object, **k: object) -> bytearray:
        buf = real(*a, **k)  # type: ignore[arg-type]
        seen.append(buf)
        return buf

    monkeypatch.setattr(phrase_input, "read_phrase", spy)
    ident = phrase_input.read_and_derive(io.BytesIO(PHRASE.encode()))
    assert ident.key_uid == KEY_UID and ident.problems == ()
    assert seen[-1] == bytearray(len(seen[-1]))  # phrase buffer zeroed after derivation
    from agent.core.identity import PhraseError

    with pytest.raises(PhraseError):
        phrase_input.read_and_derive(io.BytesIO(b"\xff\xfe not utf-8"))
    assert seen[-1] == bytearray(len(seen[-1]))
