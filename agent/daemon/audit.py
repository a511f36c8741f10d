"""The audit log: one JSON line per request (or refused connection), never a secret.

A line holds: ``time`` (UTC, ISO 8601 with ms), ``type`` (request type), ``key`` (which key was used, e.g.
``identity``) and ``peer`` (hex of the peer identity, when the request names one), the client's ``uid``/``pid``/
``exe``, ``result`` (``ok`` or the wire error code) and ``ms`` (duration); ``rule`` names the policy rule that
refused a request (agent/daemon/policy.py) and ``force`` is true when the request asked to skip a guard (unlock's
final PIN try, rotate's rate limit). Payloads, plaintexts, digests,
signatures, PINs and passphrases never reach this module: callers pass only the fields above.

The file is opened append-only with mode 0600 and ``O_NOFOLLOW``, and each line is written with one ``write`` call.
It is size-capped and rotated (:class:`agent.daemon.logcap.CappedFile`: ``audit.log.1`` .. ``audit.log.N``), and
every string field is capped (:func:`agent.daemon.logcap.cap`): a client's executable path or a remote peer's
installation id cannot make a line longer than a few KiB (JSON escapes control characters, so no field can
forge a line). It is not fsync'd per line: the audit log records what happened, it is not part of the state's
durability promise.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from agent.daemon.logcap import FIELD_CAP, CappedFile, cap
from agent.daemon.peercred import PeerCred

__all__ = ["AuditLog", "ALLOWED_FIELDS"]

#: The only keys a line may carry; anything else is dropped, so a careless caller cannot log a secret field.
ALLOWED_FIELDS = frozenset({"type", "key", "peer", "result", "ms", "conn", "detail", "installation", "suppressed",
                            "rule", "force"})
#: Executable paths may be long (PATH_MAX is 4096); more than this is an attack, not a path.
_EXE_CAP = 512
#: Defaults for a bare AuditLog (the daemon passes agent.json's audit_log_max_bytes / audit_log_backups).
_MAX_BYTES = 2 * 1024 * 1024
_BACKUPS = 2


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends JSON lines to ``path``; thread-safe."""

    def __init__(self, path: Path, *, clock: Callable[[], str] = _now_iso, max_bytes: int = _MAX_BYTES,
                 backups: int = _BACKUPS) -> None:
        self.path = path
        self._clock = clock
        self._file = CappedFile(path, max_bytes=max_bytes, backups=backups)

    def record(self, cred: PeerCred | None, exe: str, **fields: object) -> None:
        line: dict[str, object] = {"time": self._clock()}
        for k, v in fields.items():
            if k in ALLOWED_FIELDS and v is not None and v != "":
                line[k] = cap(v, FIELD_CAP) if isinstance(v, str) else v
        if cred is not None:
            line.update(uid=cred.uid, gid=cred.gid, pid=cred.pid, exe=cap(exe, _EXE_CAP))
        data = (json.dumps(line, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")
        self._file.write(data)

    def close(self) -> None:
        self._file.close()
