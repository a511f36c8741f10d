"""Shared pieces of the proof harnesses: an in-process peer, DR-header bookkeeping, store checks, RSS.

The peer is a plain :class:`SessionManager` over an in-memory backend and its own SQLite store (it never
crashes), so every ciphertext an agent hands out can be checked by a second, independent implementation of
the receiving side: the agent's promise is about what *another* endpoint can read.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.keyops import KeyOps
from agent.core.ratchet import Ratchet
from agent.core.wire import decode_protocol_message
from agent.daemon.sessions import SessionManager
from agent.daemon.store import SCHEMA_VERSION, StateStore, Store
from backends.base import Backend
from backends.memory import MemoryKey
from backends.software import SoftwareBackend
from tests.sessions.harness import MemoryBackend

__all__ = [
    "home_backend",
    "Peer",
    "Position",
    "PositionLedger",
    "StoreReport",
    "check_store",
    "check_pg_store",
    "dr_positions",
    "rss_kib",
]

#: (recipient installation id, DRHeader.id = session's bundle id, DRHeader.key = sending chain, n)
Position = tuple[str, bytes, bytes, int]


def dr_positions(message: bytes) -> list[tuple[Position, bytes]]:
    """Every Double Ratchet entry of a ProtocolMessage as (position, ciphertext)."""
    pm = decode_protocol_message(message)
    out: list[tuple[Position, bytes]] = []
    for iid, entry in pm.encrypted_message.items():
        if entry.HasField("DR_header"):
            dr = entry.DR_header
            out.append(((iid, bytes(dr.id), bytes(dr.key), int(dr.n)), bytes(entry.payload)))
    return out


def home_backend(home: Path, passphrase: str) -> Backend:
    """The backend of a software home, opened the way the daemon opens it (config.json), or a bare key file."""
    if (home / "config.json").exists():
        from backends.home import load_config, open_backend

        return open_backend(load_config(str(home)), home=str(home), passphrase_source=lambda _: passphrase)
    return SoftwareBackend(str(home / "key.json"), secret_source=lambda _: passphrase)


@dataclass
class PositionLedger:
    """Every (session, chain, n) a client was handed, with its ciphertext: a second use is a key reuse."""

    seen: dict[Position, bytes] = field(default_factory=dict)
    reuses: list[Position] = field(default_factory=list)
    _mu: threading.Lock = field(default_factory=threading.Lock)

    def add(self, message: bytes) -> list[Position]:
        """Record a handed-out message; return the positions it carries."""
        got = dr_positions(message)
        with self._mu:
            for pos, ct in got:
                prev = self.seen.setdefault(pos, ct)
                if prev != ct:  # same message key, different content: the IV repeats, the XOR of plaintexts leaks
                    self.reuses.append(pos)
        return [p for p, _ in got]


class Peer:
    """The other end of the conversation, in process: a SessionManager that is never killed."""

    def __init__(self, root: Path, secret: bytes | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="peer-", dir=root))
        key = MemoryKey(secret) if secret is not None else MemoryKey.generate()
        self.backend = MemoryBackend(key)
        self.store = Store(self.dir / "state.db", key)
        self.mgr = SessionManager(self.backend, self.store, clock=time.time_ns, rng=os.urandom)
        self.identity = self.mgr.identity

    def bundle(self) -> bytes:
        return self.mgr.our_bundle()

    def close(self) -> None:
        self.mgr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class StoreReport:
    sessions: int
    installations: int
    spks: int
    problems: list[str]


def check_store(state_db: Path, identity: KeyOps, *, handed: Iterable[tuple[bytes, int]] = (),
                scratch: Path | None = None) -> StoreReport:
    """Integrity of a (possibly crashed) home's state, checked on a copy so the crashed files stay untouched.

    * SQLite: ``PRAGMA integrity_check`` is ``ok`` and the schema version is ours.
    * The store's own invariants: it opens with this identity (key check), every sealed value authenticates,
      every ratchet state parses, every session's next send position is at or below its durable reservation
      mark ``send_hwm``, our installation id and at least one live signed prekey exist.
    * ``handed``: (sending chain, n) of every ciphertext already handed out; for a chain that is still a
      session's current sending chain, ``n < send_hwm`` must hold, or a restart could hand out n again.
    """
    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="chk-", dir=scratch))
    try:
        for suffix in ("", "-wal"):
            src = Path(str(state_db) + suffix)
            if src.exists():
                shutil.copyfile(src, work / ("state.db" + suffix))
        conn = sqlite3.connect(work / "state.db")
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                problems.append(f"integrity_check: {result[:5]}")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version != SCHEMA_VERSION:
                problems.append(f"schema version {version} != {SCHEMA_VERSION}")
        finally:
            conn.close()
        store = Store(work / "state.db", identity)
        try:
            return _check_rows(store, handed, problems)
        finally:
            store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_pg_store(url: str, identity: KeyOps, *, handed: Iterable[tuple[bytes, int]] = ()) -> StoreReport:
    """The same invariants on a PostgreSQL store's committed rows (after a kill, or with agents still serving:
    every row read is a committed one, and a position is handed out only after its mark was committed).

    The server's own crash safety stands in for ``PRAGMA integrity_check``; checked here: the schema version is
    ours and ``store_gen`` (what tells agents someone else wrote) is there, then every row as in
    :func:`check_store`."""
    from agent.daemon.store.postgres import PG_SCHEMA_VERSION, PgStore

    problems: list[str] = []
    store = PgStore(url, identity, agent_id="crash-harness-check")
    try:
        if store.schema_version() != PG_SCHEMA_VERSION:
            problems.append(f"schema version {store.schema_version()} != {PG_SCHEMA_VERSION}")
        if len(store._read("SELECT gen FROM store_gen")) != 1:
            problems.append("store_gen row missing")
        return _check_rows(store, handed, problems)
    finally:
        store.close()


def _check_rows(store: StateStore, handed: Iterable[tuple[bytes, int]], problems: list[str]) -> StoreReport:
    """The store's own invariants, engine-neutral (see :func:`check_store`)."""
    sessions = store.load_sessions()  # unseals every row: StoreCorrupt on a bad one
    installations = store.load_installations()
    spks = store.load_own_spks()
    store.load_peer_replies(), store.load_strangers()  # authenticated too: StoreCorrupt on a bad row
    if store.get_meta("installation_id") is None:
        problems.append("no installation id")
    if not any(s.expired_ns is None and not s.destroyed for s in spks):
        problems.append("no live signed prekey")
    marks: dict[bytes, int] = {}
    for rec in sessions:
        ratchet = Ratchet.from_bytes(rec.state)
        chain, pos = ratchet.sending_position()
        if pos > rec.send_hwm:
            problems.append(f"session {rec.sid.hex()}: next send {pos} above its mark {rec.send_hwm}")
        marks[chain] = max(marks.get(chain, 0), rec.send_hwm)
    for chain, n in handed:
        if chain in marks and n >= marks[chain]:
            problems.append(f"chain {chain.hex()[:16]}: handed out n={n} but the durable mark is "
                            f"{marks[chain]} (a restart would reuse it)")
    return StoreReport(len(sessions), len(installations), len(spks), problems)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
