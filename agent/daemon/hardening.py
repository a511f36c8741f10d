"""Keeping the daemon's secrets inside the daemon: no secret in its environment, no core dump, no ptrace by peers.

The daemon holds PINs, passphrases, data keys and ratchet state for its whole life, so:

* Secret-carrying variables (``KEYAGENT_PIN``, ``KEYAGENT_PASSPHRASE``, any ``KEYAGENT_*`` naming a PIN, pass or
  secret) never stay in its environment. ``keyagent start`` (the parent) reads the one variable the home's backend
  uses and hands the value to the daemon over a pipe, starting it with an environment without any of them. A daemon
  started directly (``-D``, systemd ``Environment=``) reads its variable once and then wipes every secret variable,
  including the bytes of the environment block the kernel shows in ``/proc/PID/environ`` (``unsetenv`` alone only
  unlinks the pointer; the original string stays readable there for the process's lifetime).
* The variable is picked by backend kind: a token home uses ``KEYAGENT_PIN``, a key-file home
  ``KEYAGENT_PASSPHRASE``; a user with both set (one token home, one software home) gets the right one for each.
* ``RLIMIT_CORE`` 0 (no core file with key material on a crash) and ``PR_SET_DUMPABLE`` 0 (same-uid processes
  cannot ptrace it or read its ``/proc/PID/mem``/``environ``; ssh-agent and gpg-agent do the same).
"""

from __future__ import annotations

import ctypes
import os
import resource
from typing import Mapping

__all__ = ["SECRET_VARS", "is_secret_var", "secret_var_for", "without_secrets", "take_secret_env",
           "scrub_secret_env", "harden_process", "read_secret_fd"]

SECRET_VARS = ("KEYAGENT_PIN", "KEYAGENT_PASSPHRASE")
_SECRET_WORDS = ("PIN", "PASS", "SECRET")
_PR_SET_DUMPABLE = 4  # <linux/prctl.h>
_MAX_SECRET = 4096


def is_secret_var(name: str) -> bool:
    """A variable the daemon must not keep: the two known ones, or any KEYAGENT_* naming a PIN, pass or secret."""
    return name in SECRET_VARS or (name.startswith("KEYAGENT_") and any(w in name[9:] for w in _SECRET_WORDS))


def secret_var_for(backend_kind: str) -> str:
    """The variable holding the unlock secret of a home with this backend (``pkcs11``: PIN, else passphrase)."""
    return "KEYAGENT_PIN" if backend_kind == "pkcs11" else "KEYAGENT_PASSPHRASE"


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` for a child process: every secret variable dropped."""
    return {k: v for k, v in env.items() if not is_secret_var(k)}


def take_secret_env(backend_kind: str) -> str | None:
    """The unlock secret from the backend's variable (None if unset or empty), then every secret variable wiped."""
    value = os.environ.get(secret_var_for(backend_kind)) or None
    scrub_secret_env()
    return value


def scrub_secret_env() -> None:
    """Remove every secret variable from ``os.environ`` and the C environment, and zero the original bytes."""
    names = [k for k in os.environ if is_secret_var(k)]
    wipe: list[tuple[int, int]] = []
    try:
        libc = ctypes.CDLL(None)
        envp = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
        i = 0
        while envp[i]:
            addr = envp[i]
            assert addr is not None
            entry = ctypes.string_at(addr)
            if is_secret_var(entry.split(b"=", 1)[0].decode("utf-8", "replace")):
                wipe.append((addr, len(entry)))
            i += 1
    except (OSError, ValueError, AttributeError):  # no C environ to reach: unsetenv below still unlinks them
        wipe = []
    for name in names:
        os.environ.pop(name, None)  # unsetenv: the pointer leaves environ, so nothing reads the bytes we zero next
    for addr, length in wipe:
        ctypes.memset(addr, 0, length)


def harden_process() -> None:
    """No core dumps and not dumpable (no same-uid ptrace, /proc/PID/mem or environ reads)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(err)}")


def read_secret_fd(fd: int) -> str | None:
    """The secret ``keyagent start`` wrote to the pipe ``fd`` (closed here); None when it wrote nothing."""
    data = b""
    try:
        while len(data) <= _MAX_SECRET:
            chunk = os.read(fd, _MAX_SECRET + 1)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > _MAX_SECRET:
        raise ValueError("the start secret is too large")
    return data.decode("utf-8") or None
