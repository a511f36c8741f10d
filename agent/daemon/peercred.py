"""Who is on the other end of a Unix socket (SO_PEERCRED) and whether the policy admits them.

Default policy (ssh-agent, pivy-agent): our own uid and root only. ``--allow-uid``/``--allow-gid`` admit one more
uid or primary gid for custody setups (p11-kit server's ``--user``/``--group``). The executable path is read
from ``/proc/PID/exe`` for the audit log only; it is advisory (a process can exec after connecting).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

__all__ = ["PeerCred", "peer_cred", "exe_of", "PeerPolicy"]

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    """The kernel-recorded credentials of the connecting process (taken at connect time, cannot be forged)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def exe_of(pid: int) -> str:
    """``/proc/PID/exe`` or ``"?"`` (unreadable for other users' processes, or already gone)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


@dataclass(frozen=True)
class PeerPolicy:
    """Admits our uid, root, and the configured extra uids/gids."""

    own_uid: int
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()

    def allows(self, cred: PeerCred) -> bool:
        return cred.uid in (self.own_uid, 0) or cred.uid in self.allow_uids or cred.gid in self.allow_gids

    def is_owner(self, cred: PeerCred) -> bool:
        """Our own uid or root: only these may stop the agent."""
        return cred.uid in (self.own_uid, 0)
