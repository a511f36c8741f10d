"""The audit log: one JSON line per request (or refused connection), never a secret.

A line holds: ``time`` (UTC, ISO 8601 with ms), ``type`` (request type), ``key`` (which key was used, e.g.
``identity``) and ``peer`` (hex of the peer identity, when the request names one), the client's ``uid``/``pid``/
``exe``, ``result`` (``ok`` or the wire error code) and ``ms`` (duration). Payloads, plaintexts, digests,
signatures, PINs and passphrases never reach this module: callers pass only the fields above.

The file is opened append-only with mode 0600 and each line is written with one ``write`` call (O_APPEND makes
concurrent writers from several processes interleave by whole lines). It is not fsync'd per line: the audit log
records what happened, it is not part of the state's durability promise.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from agent.daemon.peercred import PeerCred

__all__ = ["AuditLog", "ALLOWED_FIELDS"]

#: The only keys a line may carry; anything else is dropped, so a careless caller cannot log a secret field.
ALLOWED_FIELDS = frozenset({"type", "key", "peer", "result", "ms", "conn", "detail", "installation"})


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends JSON lines to ``path``; thread-safe."""

    def __init__(self, path: Path, *, clock: Callable[[], str] = _now_iso) -> None:
        self.path = path
        self._clock = clock
        self._mu = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def record(self, cred: PeerCred | None, exe: str, **fields: object) -> None:
        line: dict[str, object] = {"time": self._clock()}
        line.update({k: v for k, v in fields.items() if k in ALLOWED_FIELDS and v is not None and v != ""})
        if cred is not None:
            line.update(uid=cred.uid, gid=cred.gid, pid=cred.pid, exe=exe)
        data = (json.dumps(line, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")
        with self._mu:
            if self._fd >= 0:
                os.write(self._fd, data)

    def close(self) -> None:
        with self._mu:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
