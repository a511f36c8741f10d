"""The shared store: PostgreSQL (psycopg 3), served by several agents of one identity and installation at once.

Rows are the same sealed rows as in SQLite (:mod:`.rows`): the server, its replicas and its backups see only
ciphertext and metadata; the data key needs the token.

One agent at a time: the turn
    Every state transition of an agent runs inside a *turn*: the agent holds the store-wide PostgreSQL
    advisory lock (session-level, on the agent's one *lock connection*) for the whole transition, from before it
    reads the cache until its writes are durable. Requests of one agent overlap inside one turn (so they still
    share a commit); another agent waits in PostgreSQL's lock queue. A turn lasts at most ``turn_ns`` for new
    requests, then the agent drains its requests and lets go, so agents alternate under load.

    Why a lock and not leases: a lease needs a clock and a guess that its holder is gone; the advisory lock
    belongs to the lock connection's server backend and PostgreSQL itself releases it when that backend ends
    (the agent was killed: the socket closes at once; it was cut off: TCP keepalives, see "Partition").

    Why one store-wide lock and not one per peer: a transition can touch rows it cannot name beforehand
    (prekey rotation expires responder sessions of any peer, the retention sweep deletes any, a bundle adds
    our own devices, whose sessions every message uses). One lock is the argument that fits on a page; its
    cost is that agents do not run transitions in parallel (they still overlap token work, which happens
    outside transitions, and every agent keeps serving when another dies).

Fencing: writes go through the lock connection
    Every commit runs on the connection that holds the lock. While that connection's backend lives, the lock
    is held, so no other agent is inside a turn; once it has ended, the commit fails. A commit can therefore
    never land after another agent took over, and the next holder reads every commit of the previous one.

The cache moves with the turn
    Every commit bumps ``store_gen``. On taking the lock an agent reads it; if it is not the value the agent's
    own last commit (or last turn) left, someone else wrote, and :attr:`cache_epoch` changes: the session
    manager drops everything it caches and reloads from the database (:mod:`agent.daemon.session_cache`,
    rule 3: a reloaded session jumps to its durable ``send_hwm``). So a session moving between agents always
    reloads, and a reservation is durable in PostgreSQL before any position under it is handed out (rule 2
    holds per agent, and every agent's durable marks are in the one database).

When the database is away (restart, failover, partition)
    A read or commit that cannot reach the server raises :class:`StoreUnavailable` (wire STATE_ERROR with a
    message that says so). A commit whose outcome is unknown is treated the same way: the agent throws away
    its queued batches and its cache (:attr:`cache_epoch`) and reloads from the database once it is back;
    nothing from those batches was handed out (a result leaves only after its batch is durable), and
    whatever reached the database is read back. No restart is needed.

Partition between an agent and the database
    The agent's requests fail (StoreUnavailable) once its turn ends (at most ``turn_ns`` later) or at the
    first write. Until PostgreSQL notices the dead connection (``tcp_keepalives_*`` on the server,
    ``keepalives_*`` in the URL; the tests' server checks every few seconds) the others wait; then its lock is
    released and they go on. During that window the cut-off agent can hand out only sending positions below
    the durable marks of sessions it had loaded; the next holder reloads those sessions and starts *at* the
    marks. Positions never overlap, so the answer to a partition is delay, never key reuse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
    StoreError,
    StoreFailed,
    StoreUnavailable,
    StoreVersionTooNew,
    new_key_wrapping,
)

__all__ = ["PgStore", "PG_SCHEMA_VERSION", "StoreNotCreated", "StoreExists", "AgentInfo", "list_agents"]

log = logging.getLogger(__name__)

_V1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE own_spks(
    version BIGINT PRIMARY KEY,
    public BYTEA NOT NULL UNIQUE,
    created_ns BIGINT NOT NULL,
    expired_ns BIGINT,
    destroyed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE installations(
    identity BYTEA NOT NULL,
    installation_id TEXT NOT NULL,
    spk BYTEA,
    spk_version BIGINT NOT NULL,
    protocol_version BIGINT NOT NULL,
    timestamp_ns BIGINT NOT NULL,
    enabled INTEGER NOT NULL,
    first_seen_ns BIGINT NOT NULL,
    PRIMARY KEY(identity, installation_id));
CREATE TABLE sessions(
    sid BYTEA PRIMARY KEY,
    identity BYTEA NOT NULL,
    installation_id TEXT NOT NULL,
    bundle_id BYTEA NOT NULL,
    ephemeral BYTEA NOT NULL,
    initiator INTEGER NOT NULL,
    confirmed INTEGER NOT NULL,
    expired INTEGER NOT NULL,
    created_ns BIGINT NOT NULL,
    last_used_ns BIGINT NOT NULL,
    send_hwm BIGINT NOT NULL,
    sk BYTEA NOT NULL,
    state BYTEA NOT NULL);
CREATE INDEX sessions_by_peer ON sessions(identity, installation_id);
CREATE INDEX sessions_by_expiry ON sessions(expired, last_used_ns);
CREATE TABLE peer_replies(identity BYTEA PRIMARY KEY, at_ns BIGINT NOT NULL);
CREATE TABLE store_gen(one INTEGER PRIMARY KEY CHECK (one = 1), gen BIGINT NOT NULL);
INSERT INTO store_gen VALUES (1, 0);
CREATE TABLE agents(
    agent_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    backend_pid INTEGER NOT NULL,
    started_ns BIGINT NOT NULL)
"""

# row MACs (see rows.py); existing rows get theirs in the same transaction (PgStore._migrate)
_V2 = """
ALTER TABLE meta ADD COLUMN mac BYTEA;
ALTER TABLE own_spks ADD COLUMN mac BYTEA;
ALTER TABLE installations ADD COLUMN mac BYTEA;
ALTER TABLE sessions ADD COLUMN mac BYTEA;
ALTER TABLE peer_replies ADD COLUMN mac BYTEA
"""
_MAC_STEP = 1

# identities first learned from a message that reads without a session (sessions.py caps them)
_V3 = """
CREATE TABLE strangers(identity BYTEA PRIMARY KEY, learned_ns BIGINT NOT NULL, mac BYTEA)
"""

PG_MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
PG_SCHEMA_VERSION = len(PG_MIGRATIONS)

# the advisory lock keys (one bigint each), derived from fixed names; a database holds one identity's store
_TURN_KEY = int.from_bytes(hashlib.sha256(b"keyagent/store/turn").digest()[:8], "big", signed=True)
_SCHEMA_KEY = int.from_bytes(hashlib.sha256(b"keyagent/store/schema").digest()[:8], "big", signed=True)

_SQL: dict[tuple[str, str], str] = {}
for _table, (_cols, _nkey) in TABLES.items():
    _keys = ", ".join(_cols[:_nkey])
    _updates = ", ".join(f"{c}=EXCLUDED.{c}" for c in _cols[_nkey:])
    _SQL[("put", _table)] = (f"INSERT INTO {_table}({', '.join(_cols)}) VALUES({', '.join(['%s'] * len(_cols))})"
                             f" ON CONFLICT ({_keys}) DO UPDATE SET {_updates}")
    _SQL[("delete", _table)] = f"DELETE FROM {_table} WHERE " + " AND ".join(f"{c}=%s" for c in _cols[:_nkey])


class StoreNotCreated(StoreError):
    """The database holds no keyagent store yet: create it with ``keyagent init --store URL`` first."""


class StoreExists(StoreError):
    """The database already holds a store: add an agent to it with ``keyagent init --store URL --join``."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # an optional dependency: the embedded store needs none of it
        raise StoreError("the PostgreSQL store needs psycopg: pip install 'keyagent[postgresql]'") from exc
    return psycopg


def _unavailable(exc: BaseException) -> StoreUnavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(f"the state database cannot be reached ({first}); retry when it is back")


class _Turn:
    """Local bookkeeping of the store-wide lock: who is inside, since when, whether it is held."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.inside = 0
        self.held = False
        self.acquiring = False
        self.started = 0.0
        self.draining = False
        self.lost = False  # the lock connection went away during this turn: nobody new may join it


class PgStore(GroupCommit):
    """A PostgreSQL store (see the module docstring). Thread-safe."""

    kind = "postgresql"

    def __init__(
        self,
        url: str,
        identity: KeyOps,
        *,
        create: bool = False,
        rng: Callable[[int], bytes] = os.urandom,
        turn_ns: int = 20_000_000,
        connect_timeout: float = 5.0,
        agent_id: str | None = None,
    ) -> None:
        super().__init__()
        self._psycopg = _psycopg()
        self.url = url
        self._rng = rng
        self._turn_s = turn_ns / 1e9
        self._connect_timeout = connect_timeout
        self.agent_id = agent_id or f"{socket.gethostname()}:{os.getpid()}:{rng(4).hex()}"
        self._mu = threading.Lock()  # the lock connection: one statement or transaction at a time
        self._lock_conn: Any = None
        self._registered_pid: int | None = None
        self._gen_seen: int | None = None
        self._cache_epoch = 0
        self._turn = _Turn()
        self._readers: list[Any] = []
        self._readers_mu = threading.Lock()
        try:
            with self._mu:
                conn = self._connect_locked()
                self._migrate(conn, create, identity)
                self._codec = RowCodec(identity, self._key_meta(conn, identity, create), rng=rng)
                self._register(conn)
        except self._psycopg.OperationalError as exc:
            self._drop_lock_conn()
            raise _unavailable(exc) from None
        except BaseException:
            self._drop_lock_conn()
            raise

    # --- connections ------------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        return self._psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout)))

    def _connect_locked(self) -> Any:
        """The lock connection (caller holds ``_mu``), connected on demand."""
        if self._lock_conn is None or self._lock_conn.closed or self._lock_conn.broken:
            self._lock_conn = self._connect()
        return self._lock_conn

    def _drop_lock_conn(self) -> None:
        """Close the lock connection (caller holds ``_mu``); the server releases the lock with it."""
        conn, self._lock_conn = self._lock_conn, None
        with self._turn.cond:
            if self._turn.held:
                self._turn.lost = True
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is going away either way
                pass

    @contextmanager
    def _reader(self) -> Iterator[Any]:
        """A read connection from a small free list (reads of committed rows; autocommit)."""
        with self._readers_mu:
            if self._closed:
                raise StoreFailed("the store is closed")
            conn = self._readers.pop() if self._readers else None
        try:
            if conn is None or conn.closed:
                conn = self._connect()
            yield conn
        except self._psycopg.OperationalError as exc:
            if conn is not None:
                conn.close()
            raise _unavailable(exc) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        else:
            with self._readers_mu:
                if len(self._readers) < 4 and not self._closed:
                    self._readers.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        for attempt in (0, 1):
            try:
                with self._reader() as conn:
                    return list(conn.execute(sql, params).fetchall())
            except StoreUnavailable:
                if attempt:  # a pooled connection may have died with a server restart: one fresh try
                    raise
        raise AssertionError("unreachable")

    # --- opening ----------------------------------------------------------------------------------------------

    def _migrate(self, conn: Any, create: bool, identity: KeyOps) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_KEY,))
            conn.execute("CREATE TABLE IF NOT EXISTS keyagent_schema(one INTEGER PRIMARY KEY CHECK (one = 1),"
                         " version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM keyagent_schema").fetchone()
            version = 0 if row is None else int(row[0])
            if version == 0 and not create:
                raise StoreNotCreated("this database holds no keyagent store: run keyagent init --store URL first")
            if version > len(PG_MIGRATIONS):
                raise StoreVersionTooNew(f"state schema {version} is newer than this agent's {len(PG_MIGRATIONS)}")
            for i in range(version, len(PG_MIGRATIONS)):
                for stmt in PG_MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                if i == _MAC_STEP and version > 0:  # a store that existed before MACs: its rows get theirs now
                    keys = dict(conn.execute(
                        "SELECT key, value FROM meta WHERE key IN ('wrap_point','key_check')").fetchall())
                    codec = RowCodec(identity, keys, rng=self._rng)
                    for table, cols in UNMACED.items():
                        for r in conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall():
                            if table == "meta" and r[0] in KEY_META:
                                continue
                            conn.execute(_SQL[("put", table)], codec.add_mac(table, r))
            if version < len(PG_MIGRATIONS):
                conn.execute("INSERT INTO keyagent_schema VALUES (1, %s) ON CONFLICT (one) DO UPDATE SET"
                             " version=EXCLUDED.version", (len(PG_MIGRATIONS),))

    def schema_version(self) -> int:
        return int(str(self._read("SELECT version FROM keyagent_schema")[0][0]))

    def _key_meta(self, conn: Any, identity: KeyOps, create: bool) -> dict[str, object]:
        rows: dict[str, object] = dict(conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('wrap_point','key_check')").fetchall())
        if "wrap_point" in rows:
            if create:
                raise StoreExists("this database already holds a keyagent store: use keyagent init --store URL --join")
            return rows
        if not create:
            raise StoreNotCreated("this database holds no keyagent store: run keyagent init --store URL first")
        fresh = new_key_wrapping(identity, self._rng)
        with conn.transaction():
            for k in KEY_META:
                cur = conn.execute("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                                   (k, fresh[k]))
                if cur.rowcount != 1:  # another init won the race: its wrapping stands, ours is not used
                    raise StoreExists("another agent created this store at the same time: use --join")
        return dict(fresh)

    def _register(self, conn: Any) -> None:
        """Our row in ``agents`` (doctor lists the ones whose lock connection is alive)."""
        pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        conn.execute("INSERT INTO agents VALUES (%s, %s, %s, %s, %s) ON CONFLICT (agent_id) DO UPDATE SET"
                     " backend_pid=EXCLUDED.backend_pid", (self.agent_id, socket.gethostname(), os.getpid(), pid,
                                                           time.time_ns()))
        self._registered_pid = pid

    # --- the turn (see the module docstring) ------------------------------------------------------------------

    @property
    def cache_epoch(self) -> int:
        """Changes whenever the session manager's cache may be stale (another agent wrote, or a commit's
        outcome is unknown); the manager reloads everything when it sees a new value."""
        with self._turn.cond:
            return self._cache_epoch

    def enter(self) -> None:
        """Join the current turn, or wait for the store-wide lock and start one."""
        t = self._turn
        with t.cond:
            while True:
                self._check_usable()
                if t.held and not t.draining and not t.lost:
                    if time.monotonic() - t.started < self._turn_s or t.inside == 0:
                        t.inside += 1
                        return
                    t.draining = True  # turn over: let the others in before starting the next one
                if not t.held and not t.acquiring:
                    break
                t.cond.wait()
            t.acquiring = True
        try:
            stale = self._acquire()
        except BaseException:
            with t.cond:
                t.acquiring = False
                t.cond.notify_all()
            raise
        with t.cond:
            t.acquiring = False
            t.held = True
            t.draining = False
            t.started = time.monotonic()
            t.inside += 1
            if stale:
                self._cache_epoch += 1
            t.cond.notify_all()

    def _acquire(self) -> bool:
        """Take the lock (blocking in PostgreSQL's queue) and say whether someone else wrote since we last did."""
        with self._mu:
            try:
                conn = self._connect_locked()
                if self._registered_pid != conn.info.backend_pid:
                    self._register(conn)  # a new lock connection after a reconnect: doctor must see this one
                conn.execute("SELECT pg_advisory_lock(%s)", (_TURN_KEY,))
                gen = int(conn.execute("SELECT gen FROM store_gen").fetchone()[0])
            except self._psycopg.OperationalError as exc:
                self._drop_lock_conn()
                raise _unavailable(exc) from None
            stale = gen != self._gen_seen
            self._gen_seen = gen
            return stale

    def leave(self) -> None:
        """Our part of the turn is over (its writes durable or abandoned); the last one out lets go."""
        t = self._turn
        with t.cond:
            t.inside -= 1
            if t.inside > 0 or not t.held:
                return
            t.held = False
            t.lost = False
            t.cond.notify_all()
        with self._mu:
            conn = self._lock_conn
            if conn is None:
                return
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_TURN_KEY,))
            except self._psycopg.OperationalError:
                self._drop_lock_conn()  # the lock went with the connection

    # --- reads ------------------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        rows = self._read("SELECT value, mac FROM meta WHERE key=%s", (key,))
        return None if not rows else self._codec.meta_value(key, rows[0][0], rows[0][1])

    _SESSION_COLUMNS = f"SELECT {', '.join(TABLES['sessions'][0])} FROM sessions"
    _INSTALLATION_COLUMNS = f"SELECT {', '.join(TABLES['installations'][0])} FROM installations"

    def load_sessions(self) -> list[SessionRecord]:
        return [self._codec.session(r) for r in self._read(self._SESSION_COLUMNS + " ORDER BY created_ns, sid")]

    def load_installations(self) -> list[InstallationRecord]:
        return [self._codec.installation(r)
                for r in self._read(self._INSTALLATION_COLUMNS + " ORDER BY identity, installation_id")]

    def load_own_spks(self) -> list[OwnSpkRecord]:
        return [self._codec.own_spk(r) for r in self._read(
            f"SELECT {', '.join(TABLES['own_spks'][0])} FROM own_spks ORDER BY version")]

    def load_peer_replies(self) -> dict[bytes, int]:
        return self._identity_times("peer_replies")

    def load_strangers(self) -> dict[bytes, int]:
        return self._identity_times("strangers")

    def _identity_times(self, table: str) -> dict[bytes, int]:
        return dict(self._codec.identity_time(table, r) for r in self._read(
            f"SELECT {', '.join(TABLES[table][0])} FROM {table}"))

    def load_peer_sessions(self, identity: bytes, installation_id: str) -> list[SessionRecord]:
        rows = self._read(self._SESSION_COLUMNS + " WHERE identity=%s AND installation_id=%s"
                          " ORDER BY created_ns, sid", (identity, installation_id))
        return [self._codec.session(r) for r in rows]

    def session_peer(self, sid: bytes) -> tuple[bytes, str] | None:
        rows = self._read(f"SELECT {', '.join(SESSION_SUMMARY_COLUMNS)} FROM sessions WHERE sid=%s", (sid,))
        return self._codec.session_peer(rows[0]) if rows else None

    def _summaries(self, where: str = "", params: Sequence[object] = ()) -> list[SessionSummary]:
        rows = self._read(
            f"SELECT {', '.join(SESSION_SUMMARY_COLUMNS)} FROM sessions {'WHERE ' + where if where else ''}"
            " ORDER BY created_ns, sid", params)
        return self._codec.session_summaries(rows)

    def session_summaries(self) -> list[SessionSummary]:
        return self._summaries()

    def live_responder_sessions(self, bundle_id: bytes) -> list[SessionSummary]:
        return self._summaries("initiator=0 AND expired=0 AND bundle_id=%s", (bundle_id,))

    def expired_before(self, cutoff_ns: int) -> list[SessionSummary]:
        return self._summaries("expired=1 AND last_used_ns<=%s", (cutoff_ns,))

    def load_installations_of(self, identity: bytes) -> list[InstallationRecord]:
        rows = self._read(self._INSTALLATION_COLUMNS + " WHERE identity=%s ORDER BY installation_id", (identity,))
        return [self._codec.installation(r) for r in rows]

    def has_sessions_with(self, identity: bytes) -> bool:
        return bool(self._read("SELECT 1 FROM sessions WHERE identity=%s LIMIT 1", (identity,)))

    # --- commit -----------------------------------------------------------------------------------------------

    def _commit(self, batch: list[Batch]) -> None:
        if not batch:
            return
        with self._mu:
            conn = self._lock_conn
            if conn is None or conn.closed:
                # the lock went with the old connection: committing elsewhere would not be fenced
                raise StoreUnavailable("the state database connection was lost; retry when it is back")
            try:
                with conn.transaction():
                    with conn.cursor() as cur:
                        for _seq, rows in batch:
                            for w in rows:
                                cur.execute(_SQL[(w.kind, w.table)], w.values)
                        cur.execute("UPDATE store_gen SET gen = gen + 1 RETURNING gen")
                        gen = int(cur.fetchone()[0])
            except self._psycopg.OperationalError as exc:
                self._drop_lock_conn()
                raise _unavailable(exc) from None
            self._gen_seen = gen

    def _abandon(self) -> None:
        """A commit failed without a known outcome: our cache may be ahead of or behind the database."""
        with self._turn.cond:
            self._gen_seen = None
            self._cache_epoch += 1

    def close(self) -> None:
        """Commit anything queued (best effort), then close every connection (the lock goes with them)."""
        self._drain_for_close()
        with self._mu:
            conn = self._lock_conn
            if conn is not None and not conn.closed:
                try:
                    conn.execute("DELETE FROM agents WHERE agent_id=%s", (self.agent_id,))
                except Exception:  # noqa: BLE001 - a row left behind only lists a dead agent as dead
                    pass
            self._drop_lock_conn()
        with self._readers_mu:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()


class AgentInfo:
    """An agent registered in a store, and whether its lock connection is alive right now."""

    def __init__(self, agent_id: str, host: str, pid: int, started_ns: int, alive: bool) -> None:
        self.agent_id, self.host, self.pid, self.started_ns, self.alive = agent_id, host, pid, started_ns, alive


def list_agents(url: str) -> list[AgentInfo]:
    """The agents that registered in the store at ``url``; ``alive`` from the server's own session list."""
    psycopg = _psycopg()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT a.agent_id, a.host, a.pid, a.started_ns,"
                " EXISTS(SELECT 1 FROM pg_stat_activity s WHERE s.pid = a.backend_pid)"
                " FROM agents a ORDER BY a.started_ns").fetchall()
    except psycopg.OperationalError as exc:
        raise _unavailable(exc) from None
    except psycopg.Error as exc:  # no such table: not a keyagent store (or not yet created)
        raise StoreNotCreated(f"this database holds no keyagent store ({type(exc).__name__})") from None
    return [AgentInfo(str(r[0]), str(r[1]), int(r[2]), int(r[3]), bool(r[4])) for r in rows]
