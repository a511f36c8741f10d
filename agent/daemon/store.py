"""The agent's durable state: one SQLite database (WAL) per home, encrypted at rest, with group commit.

What lives here: our installation id, our signed-prekey (SPK) metadata, every installation we know (our own other
devices and our peers'), and the Double Ratchet sessions (ratchet state with its kept message keys, the shared key,
the sending-chain high-water mark). The session manager hands this store *write batches*; the store decides when
they are durable. The manager reads rows back on demand (``load_peer_sessions``, ``load_installations_of``, ...)
through a second, read-only connection, which in WAL mode sees committed data only; the manager keeps a row in
its memory cache until its latest write is durable, so such a read never returns a row older than one it had.

Encrypted at rest
    A random 32-byte data key is never stored. It is derived from a Diffie-Hellman of the identity key (held by
    the backend: the token, or the software key file) with a random public point saved in ``meta``:
    ``data_key = HKDF-SHA256(IK.dh(P), salt="keyagent/store", info="data key v1")``. The ratchet state and the
    shared key of every session are sealed with AES-256-GCM under that key; the associated data binds the
    ciphertext to its table, column and row id, so a sealed value cannot be moved to another row. A stolen disk
    without the token therefore yields no session key. A key-check value detects a home opened with the wrong
    identity (``StoreKeyMismatch``) before anything is written.

Durability and group commit
    ``journal_mode=WAL`` with ``synchronous=FULL``: a COMMIT returns after the WAL is fsync'd, so a committed batch
    survives kill -9 and power loss. ``submit(batch)`` only queues a batch and returns its sequence number;
    ``wait(seq)`` blocks until that batch is durable. The first waiter that finds no commit in progress becomes the
    leader: it takes *every* queued batch, applies them in submission order inside one transaction and commits
    once; the others sleep on a condition and wake when their sequence number is covered. Concurrent requests thus
    share one fsync, and durability is monotone: batch *n* durable implies every batch before it is durable. If a
    commit fails the store is poisoned (``StoreFailed``) - the in-memory copy no longer matches the disk, so the
    agent must restart and reload.

Schema
    Versioned with ``PRAGMA user_version`` and an ordered list of migrations, each applied in its own transaction.
    A database from a newer agent is refused (``StoreVersionTooNew``) rather than guessed at.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.core import secp256k1
from agent.core.error_codes import CodedError, ErrorCode
from agent.core.keyops import KeyOps

__all__ = [
    "Store",
    "StoreError",
    "StoreFailed",
    "StoreKeyMismatch",
    "StoreVersionTooNew",
    "StoreCorrupt",
    "SessionRecord",
    "SessionSummary",
    "InstallationRecord",
    "OwnSpkRecord",
    "PutSession",
    "PutInstallation",
    "PutOwnSpk",
    "PutMeta",
    "PutPeerReply",
    "DeleteSession",
    "Op",
    "SCHEMA_VERSION",
    "MIGRATIONS",
]


class StoreError(CodedError, RuntimeError):
    """Base of the store's errors; the daemon reports these as internal/state errors, not bad input."""

    code = ErrorCode.STATE_ERROR


class StoreFailed(StoreError):
    """A commit failed; memory and disk may differ, so nothing more is accepted until a restart."""


class StoreKeyMismatch(StoreError):
    """The home's data key does not unwrap with this identity: wrong key, wrong token, or tampered meta."""


class StoreVersionTooNew(StoreError):
    """The database was written by a newer agent whose schema we do not know."""


class StoreCorrupt(StoreError):
    """A sealed value failed authentication (tampered or moved between rows)."""


# --- records --------------------------------------------------------------------------------------------------


@dataclass
class SessionRecord:
    """One pairwise Double Ratchet session with one installation of one identity.

    ``bundle_id`` is the responder's SPK (33 bytes), as on the wire in ``DRHeader.id``; ``ephemeral`` is the
    initiator's EK, which makes a session id unique even when the same SPK was used twice.
    """

    sid: bytes
    identity: bytes
    installation_id: str
    bundle_id: bytes
    ephemeral: bytes
    initiator: bool
    confirmed: bool
    expired: bool
    created_ns: int
    last_used_ns: int
    send_hwm: int
    sk: bytes
    state: bytes


@dataclass(frozen=True)
class SessionSummary:
    """The unsealed columns of a session row (listing and upkeep need no keys)."""

    sid: bytes
    identity: bytes
    installation_id: str
    bundle_id: bytes
    initiator: bool
    confirmed: bool
    expired: bool
    created_ns: int
    last_used_ns: int


@dataclass
class InstallationRecord:
    """A device of an identity (ours or a peer's), as learnt from its latest signed bundle."""

    identity: bytes
    installation_id: str
    spk: bytes | None
    spk_version: int
    protocol_version: int
    timestamp_ns: int
    enabled: bool
    first_seen_ns: int


@dataclass
class OwnSpkRecord:
    """Metadata of one of our signed prekeys; the private half lives in the backend (token or key file)."""

    version: int
    public: bytes
    created_ns: int
    expired_ns: int | None
    destroyed: bool


@dataclass(frozen=True)
class PutSession:
    rec: SessionRecord


@dataclass(frozen=True)
class PutInstallation:
    rec: InstallationRecord


@dataclass(frozen=True)
class PutOwnSpk:
    rec: OwnSpkRecord


@dataclass(frozen=True)
class PutMeta:
    key: str
    value: bytes


@dataclass(frozen=True)
class PutPeerReply:
    """When we last answered this peer with our bundle (the per-peer rate limit survives restarts)."""

    identity: bytes
    at_ns: int


@dataclass(frozen=True)
class DeleteSession:
    """Forget a session for good (expired and unused past the retention period): its keys leave the disk."""

    sid: bytes


Op = Union[PutSession, PutInstallation, PutOwnSpk, PutMeta, PutPeerReply, DeleteSession]
_Row = tuple[str, tuple[object, ...]]


# --- schema ---------------------------------------------------------------------------------------------------

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

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(MIGRATIONS)

_CHECK_PLAINTEXT = b"keyagent store key check v1"
_AD_PREFIX = b"keyagent/store/v1|"


def _blob(v: object) -> bytes:
    # SQLite columns are dynamically typed: a hand-edited row could hold anything; bytes(5) would be 5 zeros
    if not isinstance(v, bytes):
        raise StoreCorrupt(f"state row holds {type(v).__name__} where bytes belong")
    return v


def _text(v: object) -> str:
    if not isinstance(v, str):
        raise StoreCorrupt(f"state row holds {type(v).__name__} where text belongs")
    return v


def _int(v: object) -> int:
    if not isinstance(v, int):
        raise StoreCorrupt(f"state row holds {type(v).__name__} where an integer belongs")
    return v


def _derive_data_key(identity: KeyOps, point: bytes) -> bytes:
    shared = identity.dh(point)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"keyagent/store", info=b"data key v1").derive(shared)


class Store:
    """SQLite state of one home. Thread-safe: ``submit``/``wait`` may be called from any thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        identity: KeyOps,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self._rng = rng
        # create the file 0600 first: SQLite gives the -wal and -shm files the database file's permissions
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # FULL: the WAL is fsync'd at every COMMIT
            self._migrate(migrations)
            self._aead = AESGCM(self._unwrap_data_key(identity))
            # on-demand reads go through their own connection: they never see (or disturb) a commit in progress
            self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except BaseException:
            self._conn.close()
            raise
        self._read_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: list[tuple[int, list[_Row]]] = []
        self._submitted = 0
        self._durable = 0
        self._leader = False
        self._failed: BaseException | None = None
        self._closed = False
        self.commits = 0  # number of fsync'd commits: the group-commit benchmark and tests read it

    # --- opening ----------------------------------------------------------------------------------------------

    def _migrate(self, migrations: Sequence[str]) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version > len(migrations):
            raise StoreVersionTooNew(f"state schema {version} is newer than this agent's {len(migrations)}")
        for i in range(version, len(migrations)):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in migrations[i].split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._conn.execute(f"PRAGMA user_version={i + 1}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _unwrap_data_key(self, identity: KeyOps) -> bytes:
        rows = dict(self._conn.execute("SELECT key, value FROM meta WHERE key IN ('wrap_point','key_check')"))
        if "wrap_point" not in rows:
            # First open: a random public point; its secret is dropped at once, so only IK can redo the DH.
            point = coincurve.PrivateKey(self._random_secret()).public_key.format(compressed=True)
            key = _derive_data_key(identity, point)
            nonce = self._rng(12)
            check = nonce + AESGCM(key).encrypt(nonce, _CHECK_PLAINTEXT, b"key_check")
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("INSERT INTO meta VALUES('wrap_point', ?), ('key_check', ?)", (point, check))
            self._conn.execute("COMMIT")
            return key
        try:
            key = _derive_data_key(identity, _blob(rows["wrap_point"]))
        except (ValueError, StoreCorrupt):  # not a curve point: the meta row was tampered with
            raise StoreKeyMismatch("this home's key wrapping is damaged") from None
        check = rows.get("key_check", b"")
        if not isinstance(check, bytes):
            raise StoreKeyMismatch("this home's key check is damaged")
        try:
            if AESGCM(key).decrypt(check[:12], check[12:], b"key_check") != _CHECK_PLAINTEXT:
                raise InvalidTag
        except (InvalidTag, ValueError):
            raise StoreKeyMismatch("this home's state was sealed for another identity key") from None
        return key

    def _random_secret(self) -> bytes:
        while True:
            s = self._rng(32)
            if secp256k1.valid_secret(s):
                return s

    # --- sealing ----------------------------------------------------------------------------------------------

    def seal(self, value: bytes, *ad_parts: bytes) -> bytes:
        """AES-256-GCM under the data key; ``ad_parts`` name the slot (table, column, row id)."""
        nonce = self._rng(12)
        return nonce + self._aead.encrypt(nonce, value, _AD_PREFIX + b"|".join(ad_parts))

    def unseal(self, blob: bytes, *ad_parts: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], _AD_PREFIX + b"|".join(ad_parts))
        except (InvalidTag, ValueError):
            raise StoreCorrupt("a sealed state value failed authentication") from None

    # --- loading (start-up only) ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else _blob(row[0])

    _SESSION_COLUMNS = ("SELECT sid, identity, installation_id, bundle_id, ephemeral, initiator, confirmed, expired,"
                        " created_ns, last_used_ns, send_hwm, sk, state FROM sessions")
    _INSTALLATION_COLUMNS = ("SELECT identity, installation_id, spk, spk_version, protocol_version, timestamp_ns,"
                             " enabled, first_seen_ns FROM installations")

    def _session(self, r: Sequence[object]) -> SessionRecord:
        sid = _blob(r[0])
        return SessionRecord(
            sid=sid,
            identity=_blob(r[1]),
            installation_id=_text(r[2]),
            bundle_id=_blob(r[3]),
            ephemeral=_blob(r[4]),
            initiator=bool(_int(r[5])),
            confirmed=bool(_int(r[6])),
            expired=bool(_int(r[7])),
            created_ns=_int(r[8]),
            last_used_ns=_int(r[9]),
            send_hwm=_int(r[10]),
            sk=self.unseal(_blob(r[11]), b"sessions", b"sk", sid),
            state=self.unseal(_blob(r[12]), b"sessions", b"state", sid),
        )

    @staticmethod
    def _installation(r: Sequence[object]) -> InstallationRecord:
        return InstallationRecord(
            identity=_blob(r[0]),
            installation_id=_text(r[1]),
            spk=None if r[2] is None else _blob(r[2]),
            spk_version=_int(r[3]),
            protocol_version=_int(r[4]),
            timestamp_ns=_int(r[5]),
            enabled=bool(_int(r[6])),
            first_seen_ns=_int(r[7]),
        )

    def load_sessions(self) -> list[SessionRecord]:
        return [self._session(r) for r in self._conn.execute(self._SESSION_COLUMNS + " ORDER BY created_ns, sid")]

    def load_installations(self) -> list[InstallationRecord]:
        return [self._installation(r) for r in
                self._conn.execute(self._INSTALLATION_COLUMNS + " ORDER BY identity, installation_id")]

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
        return [self._session(r) for r in rows]

    def session_peer(self, sid: bytes) -> tuple[bytes, str] | None:
        """The installation a stored session belongs to, or None."""
        rows = self._read("SELECT identity, installation_id FROM sessions WHERE sid=?", (sid,))
        return (_blob(rows[0][0]), _text(rows[0][1])) if rows else None

    def session_summaries(self, where: str = "", params: Sequence[object] = ()) -> list[SessionSummary]:
        """The unsealed columns of the stored sessions matching ``where`` (a fixed SQL condition), oldest first."""
        rows = self._read(
            "SELECT sid, identity, installation_id, bundle_id, initiator, confirmed, expired, created_ns, last_used_ns"
            f" FROM sessions {'WHERE ' + where if where else ''} ORDER BY created_ns, sid", params)
        return [SessionSummary(_blob(r[0]), _blob(r[1]), _text(r[2]), _blob(r[3]), bool(_int(r[4])),
                               bool(_int(r[5])), bool(_int(r[6])), _int(r[7]), _int(r[8])) for r in rows]

    def expired_before(self, cutoff_ns: int) -> list[SessionSummary]:
        """Expired sessions last used at or before ``cutoff_ns`` (the ``sessions_by_expiry`` index: the periodic
        retention sweep must not scan every row while the session manager holds its lock)."""
        return self.session_summaries("expired=1 AND last_used_ns<=?", (cutoff_ns,))

    def load_installations_of(self, identity: bytes) -> list[InstallationRecord]:
        """The stored installations of one identity (the primary key's prefix)."""
        rows = self._read(self._INSTALLATION_COLUMNS + " WHERE identity=? ORDER BY installation_id", (identity,))
        return [self._installation(r) for r in rows]

    def load_own_spks(self) -> list[OwnSpkRecord]:
        return [
            OwnSpkRecord(_int(r[0]), _blob(r[1]), _int(r[2]), None if r[3] is None else _int(r[3]), bool(_int(r[4])))
            for r in self._conn.execute(
                "SELECT version, public, created_ns, expired_ns, destroyed FROM own_spks ORDER BY version"
            )
        ]

    def load_peer_replies(self) -> dict[bytes, int]:
        return {_blob(r[0]): _int(r[1]) for r in self._conn.execute("SELECT identity, at_ns FROM peer_replies")}

    # --- group commit -----------------------------------------------------------------------------------------

    def submit(self, ops: Sequence[Op]) -> int:
        """Queue a batch (applied atomically, in submission order); return its sequence number for ``wait``.

        Sealing happens here, in the caller's thread, so the commit leader only does SQL.
        """
        rows = [self._encode(op) for op in ops]
        with self._cond:
            self._check_usable()
            self._submitted += 1
            self._queue.append((self._submitted, rows))
            return self._submitted

    def last_submitted(self) -> int:
        with self._cond:
            return self._submitted

    def durable(self) -> int:
        with self._cond:
            return self._durable

    def wait(self, seq: int) -> None:
        """Block until batch ``seq`` (and so every earlier one) is durable; commit it ourselves if nobody is."""
        with self._cond:
            if seq > self._submitted:
                raise ValueError("waiting for a batch that was never submitted")
            while self._durable < seq:
                self._check_usable()
                if self._leader:
                    self._cond.wait()
                    continue
                if not self._queue:  # cannot happen: batches are taken in order; never spin on it
                    raise StoreFailed("store queue out of order")
                self._leader = True
                batch, self._queue = self._queue, []
                self._cond.release()
                error: BaseException | None = None
                try:
                    self._commit(batch)
                except BaseException as e:  # noqa: BLE001 - any failure poisons the store
                    error = e
                finally:
                    self._cond.acquire()
                    self._leader = False
                    if error is not None:
                        self._failed = error
                    elif batch:
                        self._durable = batch[-1][0]
                        self.commits += 1
                    self._cond.notify_all()
                if error is not None:
                    raise StoreFailed("committing agent state failed; restart the agent") from error

    def write(self, ops: Sequence[Op]) -> None:
        """Submit a batch and wait until it is durable."""
        self.wait(self.submit(ops))

    def sync(self) -> None:
        """Wait until everything submitted so far is durable."""
        self.wait(self.last_submitted())

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StoreFailed("an earlier commit failed; restart the agent") from self._failed
        if self._closed:
            raise StoreFailed("the store is closed")

    def _commit(self, batch: list[tuple[int, list[_Row]]]) -> None:
        if not batch:
            return
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for _seq, rows in batch:
                for sql, params in rows:
                    c.execute(sql, params)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def _encode(self, op: Op) -> _Row:
        if isinstance(op, PutSession):
            r = op.rec
            return (
                "INSERT OR REPLACE INTO sessions VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    r.sid,
                    r.identity,
                    r.installation_id,
                    r.bundle_id,
                    r.ephemeral,
                    int(r.initiator),
                    int(r.confirmed),
                    int(r.expired),
                    r.created_ns,
                    r.last_used_ns,
                    r.send_hwm,
                    self.seal(r.sk, b"sessions", b"sk", r.sid),
                    self.seal(r.state, b"sessions", b"state", r.sid),
                ),
            )
        if isinstance(op, PutInstallation):
            i = op.rec
            return (
                "INSERT OR REPLACE INTO installations VALUES(?,?,?,?,?,?,?,?)",
                (
                    i.identity,
                    i.installation_id,
                    i.spk,
                    i.spk_version,
                    i.protocol_version,
                    i.timestamp_ns,
                    int(i.enabled),
                    i.first_seen_ns,
                ),
            )
        if isinstance(op, PutOwnSpk):
            s = op.rec
            return (
                "INSERT OR REPLACE INTO own_spks VALUES(?,?,?,?,?)",
                (s.version, s.public, s.created_ns, s.expired_ns, int(s.destroyed)),
            )
        if isinstance(op, PutMeta):
            if op.key in ("wrap_point", "key_check"):
                raise ValueError("the data-key wrapping is not writable")
            return ("INSERT OR REPLACE INTO meta VALUES(?,?)", (op.key, op.value))
        if isinstance(op, DeleteSession):
            return ("DELETE FROM sessions WHERE sid=?", (op.sid,))
        if isinstance(op, PutPeerReply):
            return ("INSERT OR REPLACE INTO peer_replies VALUES(?,?)", (op.identity, op.at_ns))
        raise TypeError(f"unknown store op {op!r}")

    def close(self) -> None:
        """Commit anything queued, then close the database."""
        with self._cond:
            pending = self._submitted
            failed = self._failed is not None
        if not failed and not self._closed:
            try:
                self.wait(pending)
            except StoreFailed:
                pass
        with self._cond:
            self._closed = True
        with self._read_lock:
            self._reader.close()
        self._conn.close()
