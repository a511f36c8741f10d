"""Reading a recovery phrase from a person: standard input, pinentry, or the terminal with echo off.

Never from argv or the environment (both are readable by other local processes through /proc, and end
up in shell history and crash reports). The phrase is read straight into a ``bytearray`` with
``os.readv`` (no ``io`` buffer keeps a copy) and intermediate buffers are zeroed; Python still cannot
promise that the kernel's pipe buffer or a pinentry process's memory are wiped, and the caller has to
zero the returned ``bytearray`` (``buf[:] = bytes(len(buf))``) once the key is derived.

Modes: ``auto`` (default) uses pinentry when standard input is a terminal and a ``pinentry`` program is
on PATH, the terminal with echo off when it is a terminal without pinentry, and otherwise reads the
piped standard input to its end. Not part of the pure core: it touches file descriptors and processes.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from typing import BinaryIO, Literal

from agent.core.identity import DerivedIdentity, derive_identity
from agent.pinentry import PinentryError, getpin

__all__ = ["MAX_PHRASE_BYTES", "PhraseInputError", "read_phrase", "read_and_derive"]

MAX_PHRASE_BYTES = 1024  # 24 words of 8 letters are 215 bytes; more is a wrong file, not a phrase
_PROMPT = "Recovery phrase (12-24 words, not shown): "
_DESC = (
    "Enter the Status recovery phrase (12 to 24 words) of the identity to import into keyagent. "
    "It is used once to derive the chat key and then dropped."
)

Mode = Literal["auto", "stdin", "tty", "pinentry"]


class PhraseInputError(ValueError):
    """No usable phrase could be read (empty, oversize, cancelled, pinentry failed); never quotes input."""


def _zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _fileno(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def _read_into(fd: int | None, stream: BinaryIO, view: memoryview) -> int:
    if fd is not None:
        return os.readv(fd, [view])
    readinto = getattr(stream, "readinto", None)
    if readinto is None:
        raise PhraseInputError("phrase source cannot be read into a buffer")
    got = readinto(view)
    return int(got or 0)


def _read_stream(stream: BinaryIO, *, stop_at_newline: bool) -> bytearray:
    """Read to EOF (or the first newline) into a fixed buffer; the returned bytearray excludes the newline."""
    fd = _fileno(stream)
    buf = bytearray(MAX_PHRASE_BYTES + 1)
    n = 0
    try:
        view = memoryview(buf)
        try:
            while n < len(buf):
                got = _read_into(fd, stream, view[n : n + 1] if stop_at_newline else view[n:])
                if got == 0:
                    break
                n += got
                if stop_at_newline and buf[n - 1] == 0x0A:
                    n -= 1
                    break
            if n > MAX_PHRASE_BYTES:
                raise PhraseInputError(f"recovery phrase input is longer than {MAX_PHRASE_BYTES} bytes")
            if not any(c not in b" \t\r\n" for c in view[:n]):
                raise PhraseInputError("no recovery phrase was given")
            return bytearray(view[:n])
        finally:
            view.release()
    finally:
        _zero(buf)


def _read_tty(fd: int) -> bytearray:
    """Prompt on the terminal and read one line with echo off (canonical mode keeps line editing)."""
    import termios

    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSAFLUSH, new)  # echo off first: the prompt then means "type now"
    try:
        try:
            os.write(fd, _PROMPT.encode())
        except OSError:
            sys.stderr.write(_PROMPT)
            sys.stderr.flush()
        with open(fd, "rb", buffering=0, closefd=False) as raw:
            return _read_stream(raw, stop_at_newline=True)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
        try:
            os.write(fd, b"\n")
        except OSError:
            pass


def _read_pinentry(program: str, ttyname: str | None) -> bytearray:
    try:
        phrase = getpin(program, description=_DESC, prompt="Phrase:", title="keyagent", ttyname=ttyname,
                        ttytype=os.environ.get("TERM"))
    except PinentryError as exc:
        raise PhraseInputError(str(exc)) from None
    if phrase is None:
        raise PhraseInputError("pinentry was cancelled or failed; no phrase was read")
    if not any(c not in b" \t\r\n" for c in phrase):
        _zero(phrase)
        raise PhraseInputError("no recovery phrase was given")
    return phrase


def read_phrase(
    stdin: BinaryIO | None = None, *, mode: Mode = "auto", pinentry_program: str | None = None
) -> bytearray:
    """Read a recovery phrase as raw UTF-8 bytes (the caller zeroes the result after use).

    ``stdin`` defaults to the process's standard input. ``pinentry_program`` defaults to ``pinentry``
    on PATH. Raises :class:`PhraseInputError` when nothing usable is read.
    """
    stream: BinaryIO = stdin if stdin is not None else sys.stdin.buffer
    fd = _fileno(stream)
    is_tty = fd is not None and os.isatty(fd)
    program = pinentry_program or shutil.which("pinentry")
    if mode == "auto":
        mode = ("pinentry" if program else "tty") if is_tty else "stdin"
    if mode == "stdin":
        return _read_stream(stream, stop_at_newline=False)
    if mode == "tty":
        if fd is None or not is_tty:
            raise PhraseInputError("standard input is not a terminal")
        return _read_tty(fd)
    if mode == "pinentry":
        if not program:
            raise PhraseInputError("no pinentry program found on PATH")
        return _read_pinentry(program, os.ttyname(fd) if fd is not None and is_tty else None)
    raise PhraseInputError(f"unknown phrase input mode {mode!r}")


def read_and_derive(
    stdin: BinaryIO | None = None, *, mode: Mode = "auto", pinentry_program: str | None = None
) -> DerivedIdentity:
    """Read the phrase, derive the Status identity (empty passphrase), zero the phrase buffer in all cases.

    For ``keyagent init --from-phrase``: store ``result.chat_secret`` (token or key file), record
    ``result.key_uid``, show ``result.problems`` as warnings, then call ``result.wipe()``. A bad checksum
    also raises :class:`agent.core.identity.PhraseWarning` through :mod:`warnings`, as Status derives anyway.
    """
    phrase = read_phrase(stdin, mode=mode, pinentry_program=pinentry_program)
    try:
        return derive_identity(phrase)
    finally:
        _zero(phrase)
