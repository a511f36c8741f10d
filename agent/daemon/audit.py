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
import time
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


#: One encoder for every line (json.dumps with these options builds a new one per call).
_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
#: The fields of a request's line (Service.process): written by :meth:`AuditLog.line`'s fast path.
_REQUEST_FIELDS = frozenset({"type", "result", "ms", "conn", "key", "peer", "detail"})
_second: tuple[int, str] = (-1, "")  # the formatted UTC second last used (every request writes a line)


def _now_iso() -> str:
    """UTC now as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the second's text is formatted once per second)."""
    global _second
    ns = time.time_ns()
    sec, ms = divmod(ns // 1_000_000, 1000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{ms:03d}Z"


def _plain(text: str) -> bool:
    """Printable ASCII without a quote or a backslash: JSON holds it verbatim."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


class AuditLog:
    """Appends JSON lines to ``path``; thread-safe."""

    def __init__(self, path: Path, *, clock: Callable[[], str] = _now_iso, max_bytes: int = _MAX_BYTES,
                 backups: int = _BACKUPS) -> None:
        self.path = path
        self._clock = clock
        self._file = CappedFile(path, max_bytes=max_bytes, backups=backups)
        #: Append one line from :meth:`line` (:meth:`write` for several): the file's own method, one call less.
        self.write_line: Callable[[bytes], None] = self._file.write
        # the client's part of a line, encoded once per client (a line is written for every request)
        self._clients: dict[tuple[int, int, int, str], str] = {}

    def record(self, cred: PeerCred | None, exe: str, **fields: object) -> None:
        self.write([self.line(cred, exe, **fields)])

    def write(self, lines: list[bytes]) -> None:
        """Append lines from :meth:`line`, several per write (a batch of requests) but never more than a quarter
        of the file cap at once, so rotation still happens between whole lines."""
        limit = max(1, self._file.max_bytes // 4)
        chunk: list[bytes] = []
        size = 0
        for one in lines:
            if chunk and size + len(one) > limit:
                self._file.write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(one)
            size += len(one)
        if chunk:
            self._file.write(b"".join(chunk))

    def line(self, cred: PeerCred | None, exe: str, **fields: object) -> bytes:
        """One encoded line (with its newline), not yet written.

        A request's line (exactly the fields :class:`Service` gives every answer, each a plain value) is written
        with one format string: the same bytes as the JSON encoder's (sorted keys, empty fields left out), in half
        the time and a third of the code run. That matters because every request writes one, and the agent often
        runs it with cold CPU caches (after the client or another agent ran). Anything else takes
        :meth:`_encoded_line`."""
        if cred is not None and fields.keys() == _REQUEST_FIELDS:
            t, r, ms, conn = fields["type"], fields["result"], fields["ms"], fields["conn"]
            key, peer, detail = fields["key"], fields["peer"], fields["detail"]
            now = self._clock()
            if (type(t) is str and type(r) is str and type(key) is str and type(peer) is str and type(detail) is str
                    and type(conn) is int and type(ms) is float and 0.0 <= ms < 1e9 and t and r
                    and max(len(t), len(r), len(key), len(peer), len(detail)) <= FIELD_CAP
                    and _plain(t + r + key + peer + detail + now)):
                d = f',"detail":"{detail}"' if detail else ""
                k = f',"key":"{key}"' if key else ""
                p = f',"peer":"{peer}"' if peer else ""
                client = self._clients.get((cred.uid, cred.gid, cred.pid, exe)) or self._client(cred, exe)
                return (f'{{"conn":{conn}{d}{k},"ms":{ms!r}{p},"result":"{r}","time":"{now}","type":"{t}",'
                        f'{client}}}\n').encode()
            return self._encoded_line(cred, exe, fields, now)
        return self._encoded_line(cred, exe, fields)

    def _encoded_line(self, cred: PeerCred | None, exe: str, fields: dict[str, object],
                      now: str | None = None) -> bytes:
        """:meth:`line` through the JSON encoder: any fields, any values."""
        line: dict[str, object] = {"time": self._clock() if now is None else now}
        for k, v in fields.items():
            if k in ALLOWED_FIELDS and v is not None and v != "":
                line[k] = cap(v, FIELD_CAP) if isinstance(v, str) else v
        text = _ENCODE(line)
        if cred is not None:  # the request's fields (sorted), then the client's (sorted)
            text = text[:-1] + "," + self._client(cred, exe) + "}"
        return (text + "\n").encode("utf-8")

    def _client(self, cred: PeerCred, exe: str) -> str:
        key = (cred.uid, cred.gid, cred.pid, exe)
        part = self._clients.get(key)
        if part is None:
            doc = {"exe": cap(exe, _EXE_CAP), "gid": cred.gid, "pid": cred.pid, "uid": cred.uid}
            part = _ENCODE(doc)[1:-1]
            if len(self._clients) >= 256:
                self._clients.clear()
            self._clients[key] = part
        return part

    def close(self) -> None:
        self._file.close()
