"""The embedded store: one SQLite database (WAL) per home, rows sealed by :mod:`.rows`, group commit.

The manager reads rows back on demand (``load_peer_sessions``, ``load_installations_of``, ...) through a
second, read-only connection, which in WAL mode sees committed data only; the manager keeps a row in its
memory cache until its latest write is durable, so such a read never returns a row older than one it had.

Durability
    ``journal_mode=WAL`` with ``synchronous=FULL``: a COMMIT returns after the WAL is fsync'd, so a committed batch
    survives kill -9 and power loss; concurrent requests share one fsync (:mod:`.group_commit`).

Schema
    Versioned with ``PRAGMA user_version`` and an ordered list of migrations, each applied in its own transaction.
    A database from a newer agent is refused (``StoreVersionTooNew``) rather than guessed at.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Sequence

from agent.core.keyops import KeyOps

from .group_commit import Batch, GroupCommit
from .rows import (
    KEY_META,
    SESSION_SUMMARY_COLUMNS,
    TABLES,
    UNMACED,
    InstallationRecord,
    OwnSpkRecord,
    RowCodec,
    SessionRecord,
    SessionSummary,
    StoreFailed,
    StoreVersionTooNew,
    new_key_wrapping,
)

__all__ = ["SqliteStore", "SCHEMA_VERSION", "MIGRATIONS"]

_V1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE own_spks(
    version INTEGER PRIMARY KEY,
    public BLOB NOT NULL UNIQUE,
    created_ns INTEGER NOT NULL,
    expired_ns INTEGER,
    destroyed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE installations(
    identity BLOB NOT NULL,
    installation_id TEXT NOT NULL,
    spk BLOB,
    spk_version INTEGER NOT NULL,
    protocol_version INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    PRIMARY KEY(identity, installation_id));
CREATE TABLE sessions(
    sid BLOB PRIMARY KEY,
    identity BLOB NOT NULL,
    installation_id TEXT NOT NULL,
    bundle_id BLOB NOT NULL,
    ephemeral BLOB NOT NULL,
    initiator INTEGER NOT NULL,
    confirmed INTEGER NOT NULL,
    expired INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    last_used_ns INTEGER NOT NULL,
    send_hwm INTEGER NOT NULL,
    sk BLOB NOT NULL,
    state BLOB NOT NULL);
CREATE INDEX sessions_by_peer ON sessions(identity, installation_id);
"""

_V2 = """
CREATE TABLE peer_replies(identity BLOB PRIMARY KEY, at_ns INTEGER NOT NULL);
"""

_V3 = """
CREATE INDEX sessions_by_expiry ON sessions(expired, last_used_ns);
"""

# row MACs (see rows.py): the column only; the step that fills it for existing rows runs in the same transaction
_V4 = """
ALTER TABLE meta ADD COLUMN mac BLOB;
ALTER TABLE own_spks ADD COLUMN mac BLOB;
ALTER TABLE installations ADD COLUMN mac BLOB;
ALTER TABLE sessions ADD COLUMN mac BLOB;
ALTER TABLE peer_replies ADD COLUMN mac BLOB;
"""
_MAC_STEP = 3  # MIGRATIONS[3] adds the MACs: the codec must exist before it runs

# identities first learned from a message that reads without a session (sessions.py caps them)
_V5 = """
CREATE TABLE strangers(identity BLOB PRIMARY KEY, learned_ns INTEGER NOT NULL, mac BLOB);
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5)
SCHEMA_VERSION = len(MIGRATIONS)


def _columns(table: str) -> str:
    return ", ".join(TABLES[table][0])


# one statement per (kind, table): INSERT OR REPLACE of every column, or DELETE by the key columns
_SQL: dict[tuple[str, str], str] = {}
for _table, (_cols, _nkey) in TABLES.items():
    _SQL[("put", _table)] = f"INSERT OR REPLACE INTO {_table}({', '.join(_cols)}) VALUES({','.join('?' * len(_cols))})"
    _SQL[("delete", _table)] = f"DELETE FROM {_table} WHERE " + " AND ".join(f"{c}=?" for c in _cols[:_nkey])


class SqliteStore(GroupCommit):
    """SQLite state of one home. Thread-safe: ``submit``/``wait`` may be called from any thread."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        identity: KeyOps,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._rng = rng
        # create the file 0600 first: SQLite gives the -wal and -shm files the database file's permissions
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # FULL: the WAL is fsync'd at every COMMIT
            codec = self._migrate(migrations, identity)
            self._codec = codec or RowCodec(identity, self._key_meta(identity), rng=rng)
            # on-demand reads go through their own connection: they never see (or disturb) a commit in progress
            self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except BaseException:
            self._conn.close()
            raise
        self._read_lock = threading.Lock()

    # --- opening ----------------------------------------------------------------------------------------------

    def _migrate(self, migrations: Sequence[str], identity: KeyOps) -> RowCodec | None:
        """Apply the missing migrations, each in its own transaction; returns the row codec if a step needed it."""
        codec: RowCodec | None = None
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version > len(migrations):
            raise StoreVersionTooNew(f"state schema {version} is newer than this agent's {len(migrations)}")
        for i in range(version, len(migrations)):
            if i == _MAC_STEP:
                codec = RowCodec(identity, self._key_meta(identity), rng=self._rng)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in migrations[i].split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                if codec is not None and i == _MAC_STEP:
                    self._add_macs(codec)
                self._conn.execute(f"PRAGMA user_version={i + 1}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return codec

    def _add_macs(self, codec: RowCodec) -> None:
        """Give every row written before schema 4 its MAC (sessions resealed to bind to it), in the migration's
        own transaction: after it, a row without a MAC is never one this agent wrote."""
        for table, cols in UNMACED.items():
            rows = list(self._conn.execute(f"SELECT {', '.join(cols)} FROM {table}"))
            for r in rows:
                if table == "meta" and r[0] in KEY_META:
                    continue
                self._conn.execute(_SQL[("put", table)], codec.add_mac(table, r))

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _key_meta(self, identity: KeyOps) -> dict[str, object]:
        """The data-key wrapping rows, created on first open."""
        rows: dict[str, object] = dict(self._conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('wrap_point','key_check')"))
        if "wrap_point" not in rows:
            fresh = new_key_wrapping(identity, self._rng)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO meta(key, value) VALUES(?, ?)", [(k, fresh[k]) for k in KEY_META])
            self._conn.execute("COMMIT")
            rows = dict(fresh)
        return rows

    # --- the turn: one agent per home (the home's agent lock), so there is nothing to take or reload -------------

    cache_epoch = 0

    def enter(self) -> None:
        pass

    def leave(self) -> None:
        pass

    # --- sealing (tests and tools seal values the way rows are sealed) -----------------------------------------

    def seal(self, value: bytes, *ad_parts: bytes) -> bytes:
        return self._codec.seal(value, *ad_parts)

    def unseal(self, blob: bytes, *ad_parts: bytes) -> bytes:
        return self._codec.unseal(blob, *ad_parts)

    # --- loading (start-up only) ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value, mac FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else self._codec.meta_value(key, row[0], row[1])

    _SESSION_COLUMNS = f"SELECT {_columns('sessions')} FROM sessions"
    _INSTALLATION_COLUMNS = f"SELECT {_columns('installations')} FROM installations"

    def load_sessions(self) -> list[SessionRecord]:
        return [self._codec.session(r)
                for r in self._conn.execute(self._SESSION_COLUMNS + " ORDER BY created_ns, sid")]

    def load_installations(self) -> list[InstallationRecord]:
        return [self._codec.installation(r) for r in
                self._conn.execute(self._INSTALLATION_COLUMNS + " ORDER BY identity, installation_id")]

    def load_own_spks(self) -> list[OwnSpkRecord]:
        return [self._codec.own_spk(r) for r in
                self._conn.execute(f"SELECT {_columns('own_spks')} FROM own_spks ORDER BY version")]

    def load_peer_replies(self) -> dict[bytes, int]:
        return self._identity_times("peer_replies")

    def load_strangers(self) -> dict[bytes, int]:
        return self._identity_times("strangers")

    def _identity_times(self, table: str) -> dict[bytes, int]:
        rows = self._conn.execute(f"SELECT {_columns(table)} FROM {table}")
        return dict(self._codec.identity_time(table, r) for r in rows)

    # --- on-demand reads (committed rows only; see the module docstring) ----------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Sequence[object]]:
        with self._read_lock:
            if self._closed:
                raise StoreFailed("the store is closed")
            return list(self._reader.execute(sql, params))

    def load_peer_sessions(self, identity: bytes, installation_id: str) -> list[SessionRecord]:
        """Every stored session with one installation (the ``sessions_by_peer`` index), oldest first."""
        rows = self._read(self._SESSION_COLUMNS + " WHERE identity=? AND installation_id=? ORDER BY created_ns, sid",
                          (identity, installation_id))
        return [self._codec.session(r) for r in rows]

    def session_peer(self, sid: bytes) -> tuple[bytes, str] | None:
        """The installation a stored session belongs to, or None."""
        rows = self._read(f"SELECT {', '.join(SESSION_SUMMARY_COLUMNS)} FROM sessions WHERE sid=?", (sid,))
        return self._codec.session_peer(rows[0]) if rows else None

    def _summaries(self, where: str = "", params: Sequence[object] = ()) -> list[SessionSummary]:
        rows = self._read(
            f"SELECT {', '.join(SESSION_SUMMARY_COLUMNS)} FROM sessions {'WHERE ' + where if where else ''}"
            " ORDER BY created_ns, sid", params)
        return self._codec.session_summaries(rows)

    def session_summaries(self) -> list[SessionSummary]:
        """The unsealed columns of every stored session, oldest first."""
        return self._summaries()

    def live_responder_sessions(self, bundle_id: bytes) -> list[SessionSummary]:
        """Our stored, not expired responder sessions started on one of our SPKs."""
        return self._summaries("initiator=0 AND expired=0 AND bundle_id=?", (bundle_id,))

    def expired_before(self, cutoff_ns: int) -> list[SessionSummary]:
        """Expired sessions last used at or before ``cutoff_ns`` (the ``sessions_by_expiry`` index: the periodic
        retention sweep must not scan every row while the session manager holds its lock)."""
        return self._summaries("expired=1 AND last_used_ns<=?", (cutoff_ns,))

    def load_installations_of(self, identity: bytes) -> list[InstallationRecord]:
        """The stored installations of one identity (the primary key's prefix)."""
        rows = self._read(self._INSTALLATION_COLUMNS + " WHERE identity=? ORDER BY installation_id", (identity,))
        return [self._codec.installation(r) for r in rows]

    def has_sessions_with(self, identity: bytes) -> bool:
        """Whether any stored session is with ``identity`` (the ``sessions_by_peer`` index's prefix)."""
        return bool(self._read("SELECT 1 FROM sessions WHERE identity=? LIMIT 1", (identity,)))

    # --- commit -------------------------------------------------------------------------------------------------

    def _commit(self, batch: list[Batch]) -> None:
        if not batch:
            return
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for _seq, rows in batch:
                for w in rows:
                    c.execute(_SQL[(w.kind, w.table)], w.values)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Commit anything queued, then close the database."""
        self._drain_for_close()
        with self._read_lock:
            self._reader.close()
        self._conn.close()
