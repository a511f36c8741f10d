"""Whether a client may talk to the socket it is about to use: checked before a single byte is sent.

A client sends PINs, passphrases and plaintexts to the agent, so it must know the listener is the agent and not
a squatter. Two checks, both in every client path (:class:`agent.client.AgentClient` is the only one: the CLI,
the demo and library users all connect through it):

1. Before ``connect()``: the socket's directory is a real directory (``lstat``, no symlink) owned by a trusted uid
   and writable by nobody else (mode 0700, or the shared mode 0711/0755 of custody setups). Another uid that
   created the directory first is refused here, before it even sees a connection.
2. After ``connect()``, before sending: the listener's kernel-recorded credentials (``SO_PEERCRED`` on the
   client's end) name a trusted uid. This is the check that cannot be raced: whatever happened to the path
   between check 1 and the connect, the process we are connected to is the one whose uid we read.

Trusted uids: our own, root, and the uids in ``$KEYAGENT_AGENT_UID`` (comma-separated; an admitted custody uid
sets it to the owner's uid to reach the owner's agent).

Why the ``/tmp`` fallback (``$TMPDIR/keyagent-$UID`` when ``XDG_RUNTIME_DIR`` is unset, see :mod:`agent.paths`) stays
predictable rather than ``mkdtemp``-random as ssh-agent's is: ssh-agent can randomise because every client learns
the path from ``SSH_AUTH_SOCK``; ours must find the agent of a home without being told (cron, a second shell,
systemd units), so the name is derived. ``mkdtemp`` protects ssh-agent only because nobody else can own the
directory it made; the same guarantee comes here from verifying the owner on both sides (tmux's
``/tmp/tmux-$UID`` model): the daemon refuses to bind in a directory it does not own with mode 0700, and the client
refuses to connect into one. A squatter therefore gains nothing but a denial of service, and the error names the
directory and the way out (set ``XDG_RUNTIME_DIR`` or ``TMPDIR``, or pass ``--socket``).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

__all__ = ["UntrustedSocket", "trusted_agent_uids", "check_socket_dir", "check_peer"]

_UCRED = struct.Struct("3i")


class UntrustedSocket(ConnectionError):
    """The socket (or its directory) is controlled by another user: nothing was sent. Remove it or use another path."""

    code = "UNTRUSTED_SOCKET"


def trusted_agent_uids() -> frozenset[int]:
    """Our uid, root, and ``$KEYAGENT_AGENT_UID`` (the owner's uid, for an admitted custody client)."""
    uids = {os.getuid(), 0}
    for part in os.environ.get("KEYAGENT_AGENT_UID", "").split(","):
        part = part.strip()
        if part:
            try:
                uids.add(int(part))
            except ValueError as exc:
                raise UntrustedSocket(f"KEYAGENT_AGENT_UID={part!r} is not a uid") from exc
    return frozenset(uids)


def _fix_hint(directory: Path) -> str:
    return (f"remove {directory} (as its owner or root), or set XDG_RUNTIME_DIR / TMPDIR to a directory of "
            f"your own, or pass --socket")


def check_socket_dir(path: str | os.PathLike[str], trusted: frozenset[int]) -> None:
    """Refuse a socket whose directory another uid owns or may write to (run before ``connect``)."""
    directory = Path(os.path.abspath(os.fspath(path))).parent
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return  # nothing to connect to: connect() reports the absent agent
    except OSError as exc:
        raise UntrustedSocket(f"cannot check socket directory {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedSocket(f"socket directory {directory} is not a directory (a symlink?); nothing was sent. "
                              + _fix_hint(directory))
    if st.st_uid not in trusted:
        raise UntrustedSocket(f"socket directory {directory} is owned by uid {st.st_uid}, not by you "
                              f"({os.getuid()}): another user may be squatting it; nothing was sent. "
                              + _fix_hint(directory))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UntrustedSocket(f"socket directory {directory} has mode {mode:04o}: others can plant a socket "
                              f"there; nothing was sent. chmod go-w {directory}, or " + _fix_hint(directory))


def check_peer(sock: socket.socket, path: str, trusted: frozenset[int]) -> None:
    """Refuse a connected socket whose listener runs as an untrusted uid (run before the first send)."""
    # struct ucred {pid, uid, gid}, as the daemon reads it (agent/daemon/peercred.py); the client imports nothing
    # from the daemon. On the connecting side it names the process that called listen().
    pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid not in trusted:
        raise UntrustedSocket(f"the process listening on {path} runs as uid {uid} (pid {pid}), not as "
                              f"you ({os.getuid()}) or root: it is not your agent; nothing was sent. "
                              f"Remove {path}, or set KEYAGENT_AGENT_UID if you are an admitted custody user")
