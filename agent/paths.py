"""Where an agent lives: its home, the runtime directory and the socket, shared by the client and the daemon.

A client library must find the socket without importing the daemon, so these rules live here, below both.

Home: one per identity (``--home DIR`` / ``KEYAGENT_HOME``, default ``$XDG_DATA_HOME/keyagent``).

Socket location: ``$XDG_RUNTIME_DIR/keyagent/`` when XDG_RUNTIME_DIR is set (a per-login tmpfs owned by the user),
otherwise ``$TMPDIR/keyagent-$UID/`` (``/tmp`` when TMPDIR is unset). That fallback name is predictable on
purpose and safe because both sides verify its owner: the daemon binds only in a directory it owns with mode 0700
(agent/daemon/socketdir.py), the client connects only into one a trusted uid owns (agent/socket_trust.py, where
the choice against a ``mkdtemp`` name is argued). Inside, each home gets its own socket, ``agent-<hash>.sock`` where the hash is
of the home's real path, so several agents (one per identity) run side by side and the path stays well under the
108-byte ``sun_path`` limit.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

__all__ = ["default_home", "runtime_dir", "socket_path_for", "socket_answers"]


def default_home() -> str:
    """``$KEYAGENT_HOME``, else ``$XDG_DATA_HOME/keyagent`` (``~/.local/share/keyagent``)."""
    env = os.environ.get("KEYAGENT_HOME")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "keyagent")


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/keyagent`` if XDG_RUNTIME_DIR is an existing directory, else ``$TMPDIR/keyagent-$UID``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "keyagent"
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"keyagent-{os.getuid()}"


def socket_path_for(home: str | os.PathLike[str]) -> Path:
    """The default socket of the agent serving ``home``."""
    real = os.path.realpath(os.path.expanduser(os.fspath(home)))
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return runtime_dir() / f"agent-{digest}.sock"


def socket_answers(path: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """True if something accepts a connection on ``path`` (OpenSSH's ``socket_is_stale`` test, inverted)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
