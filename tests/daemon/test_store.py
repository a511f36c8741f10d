"""The SQLite store: round trips, encryption at rest, migrations, group commit, crash durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.daemon.store import (
    MIGRATIONS,
    DeleteInstallation,
    DeletePeerReply,
    DeleteSession,
    DeleteStranger,
    SCHEMA_VERSION,
    InstallationRecord,
    OwnSpkRecord,
    PutInstallation,
    PutMeta,
    PutOwnSpk,
    PutPeerReply,
    PutSession,
    PutStranger,
    SessionRecord,
    Store,
    StoreCorrupt,
    StoreFailed,
    StoreKeyMismatch,
    StoreVersionTooNew,
)
from backends.memory import MemoryKey
from agent.daemon.store.rows import Op, session_id

IK = MemoryKey(b"\x11" * 32)
OTHER = MemoryKey(b"\x22" * 32)
SECRET_STATE = b"RATCHET-STATE-" + bytes(range(50))
SECRET_SK = b"S" * 8 + b"K" * 24


def sid_of(n: int) -> bytes:
    """The id of :func:`session` ``(n)``: derived from its parts, as the store checks."""
    return session_id(OTHER.public_key(), "inst-%d" % n, b"\x02" + bytes([n]) * 32, b"\x03" + bytes([n]) * 32)


def session(n: int = 1, **kw: object) -> SessionRecord:
    base: dict[str, object] = dict(
        sid=b"",
        identity=OTHER.public_key(),
        installation_id="inst-%d" % n,
        bundle_id=b"\x02" + bytes([n]) * 32,
        ephemeral=b"\x03" + bytes([n]) * 32,
        initiator=True,
        confirmed=False,
        expired=False,
        created_ns=1000 + n,
        last_used_ns=2000 + n,
        send_hwm=64,
        sk=SECRET_SK,
        state=SECRET_STATE + bytes([n]),
    )
    base.update(kw)
    if not base["sid"]:
        base["sid"] = session_id(base["identity"], base["installation_id"], base["bundle_id"],  # type: ignore[arg-type]
                                 base["ephemeral"])
    return SessionRecord(**base)  # type: ignore[arg-type]


def inst(iid: str = "a", **kw: object) -> InstallationRecord:
    base: dict[str, object] = dict(
        identity=OTHER.public_key(),
        installation_id=iid,
        spk=b"\x02" + b"\x44" * 32,
        spk_version=3,
        protocol_version=1,
        timestamp_ns=1_700_000_000_000_000_000,
        enabled=True,
        first_seen_ns=5,
    )
    base.update(kw)
    return InstallationRecord(**base)  # type: ignore[arg-type]



def _written_then_opened_raw(db: Path, *ops: Op) -> sqlite3.Connection:
    """Write ``ops`` through a store, close it, and open the file as plain SQLite (what an offline editor does)."""
    s = Store(db, IK)
    s.write(list(ops))
    s.close()
    return sqlite3.connect(db)


def _commit_then_sessions_refused(c: sqlite3.Connection, db: Path) -> None:
    """Save the offline edit, then the store refuses to load the sessions (StoreCorrupt)."""
    c.commit()
    c.close()
    s2 = Store(db, IK)
    with pytest.raises(StoreCorrupt):
        s2.load_sessions()
    s2.close()

def test_round_trip_every_record(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    s = Store(db, IK)
    s.write(
        [
            PutSession(session(1)),
            PutSession(session(2, expired=True, confirmed=True, initiator=False)),
            PutInstallation(inst("a")),
            PutInstallation(inst("b", spk=None, enabled=False)),
            PutOwnSpk(OwnSpkRecord(1, b"\x02" + b"\x55" * 32, 10, None, False)),
            PutOwnSpk(OwnSpkRecord(2, b"\x03" + b"\x55" * 32, 20, 30, True)),
            PutMeta("installation_id", b"uuid"),
            PutPeerReply(OTHER.public_key(), 99),
        ]
    )
    s.close()
    s2 = Store(db, IK)
    assert s2.load_sessions() == [session(1), session(2, expired=True, confirmed=True, initiator=False)]
    assert s2.load_installations() == [inst("a"), inst("b", spk=None, enabled=False)]
    assert s2.load_own_spks() == [
        OwnSpkRecord(1, b"\x02" + b"\x55" * 32, 10, None, False),
        OwnSpkRecord(2, b"\x03" + b"\x55" * 32, 20, 30, True),
    ]
    assert s2.get_meta("installation_id") == b"uuid"
    assert s2.get_meta("missing") is None
    assert s2.load_peer_replies() == {OTHER.public_key(): 99}
    s2.close()


def test_replacing_a_session_keeps_one_row(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", IK)
    s.write([PutSession(session(1))])
    s.write([PutSession(session(1, send_hwm=128, state=b"newer"))])
    (only,) = s.load_sessions()
    assert only.send_hwm == 128 and only.state == b"newer"
    s.close()


def test_secrets_are_not_on_disk_in_clear(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    s = Store(db, IK)
    s.write([PutSession(session(1))])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["state.db", "state.db-shm", "state.db-wal"]
    for f in tmp_path.iterdir():  # the database and its -wal/-shm companions, whatever the umask
        assert os.stat(f).st_mode & 0o077 == 0, f
    raw_open = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert SECRET_STATE not in raw_open and SECRET_SK not in raw_open
    s.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert SECRET_STATE not in raw and SECRET_SK not in raw
    assert OTHER.public_key() in raw  # sanity: the file does hold the row


def test_wrong_identity_cannot_open(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    Store(db, IK).close()
    with pytest.raises(StoreKeyMismatch):
        Store(db, OTHER)
    Store(db, IK).close()  # and the right key still opens it


def test_sealed_value_moved_to_another_row_is_rejected(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    c = _written_then_opened_raw(db, PutSession(session(1)), PutSession(session(2)))
    (state1,) = c.execute("SELECT state FROM sessions WHERE sid=?", (sid_of(1),)).fetchone()
    c.execute("UPDATE sessions SET state=? WHERE sid=?", (state1, sid_of(2)))
    _commit_then_sessions_refused(c, db)


def test_bit_flip_in_sealed_value_is_rejected(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    c = _written_then_opened_raw(db, PutSession(session(1)))
    (sk,) = c.execute("SELECT sk FROM sessions").fetchone()
    flipped = bytearray(sk)
    flipped[20] ^= 1
    c.execute("UPDATE sessions SET sk=?", (bytes(flipped),))
    _commit_then_sessions_refused(c, db)


def _old_session_row(old: Store, rec: SessionRecord) -> tuple[object, ...]:
    """A session row as agents before schema 4 wrote it: no MAC, sealed values bound to the row id only."""
    return (rec.sid, rec.identity, rec.installation_id, rec.bundle_id, rec.ephemeral, int(rec.initiator),
            int(rec.confirmed), int(rec.expired), rec.created_ns, rec.last_used_ns, rec.send_hwm,
            old.seal(rec.sk, b"sessions", b"sk", rec.sid), old.seal(rec.state, b"sessions", b"state", rec.sid))


def test_migrates_a_version_1_database(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = Store(db, IK, migrations=MIGRATIONS[:1])
    assert old.schema_version() == 1
    c = old._conn
    c.execute("INSERT INTO sessions VALUES(" + ",".join("?" * 13) + ")", _old_session_row(old, session(1)))
    c.execute("INSERT INTO meta VALUES(?, ?)", ("installation_id", b"x"))
    with pytest.raises(sqlite3.OperationalError):
        c.execute("INSERT INTO peer_replies VALUES(?, ?)", (OTHER.public_key(), 1))  # no v2 table yet
    c.close()
    new = Store(db, IK)
    assert new.schema_version() == SCHEMA_VERSION == 5
    assert new.load_sessions() == [session(1)]
    assert new.load_strangers() == {}
    assert new.get_meta("installation_id") == b"x"
    new.write([PutPeerReply(OTHER.public_key(), 7)])
    assert new.load_peer_replies() == {OTHER.public_key(): 7}
    new.close()


def test_migration_to_schema_4_authenticates_every_existing_row(tmp_path: Path) -> None:
    """Rows written by a schema-3 agent get their MACs in the migration; afterwards an edit of any of them, or
    a row without a MAC, is refused."""
    db = tmp_path / "state.db"
    old = Store(db, IK, migrations=MIGRATIONS[:3])
    c = old._conn
    c.execute("INSERT INTO sessions VALUES(" + ",".join("?" * 13) + ")", _old_session_row(old, session(1)))
    c.execute("INSERT INTO sessions VALUES(" + ",".join("?" * 13) + ")", _old_session_row(old, session(2)))
    i = inst("a")
    c.execute("INSERT INTO installations VALUES(?,?,?,?,?,?,?,?)", (i.identity, i.installation_id, i.spk,
              i.spk_version, i.protocol_version, i.timestamp_ns, int(i.enabled), i.first_seen_ns))
    c.execute("INSERT INTO own_spks VALUES(?,?,?,?,?)", (1, b"\x02" + b"\x55" * 32, 10, None, 0))
    c.execute("INSERT INTO meta VALUES(?, ?)", ("installation_id", b"x"))
    c.execute("INSERT INTO peer_replies VALUES(?, ?)", (OTHER.public_key(), 5))
    c.close()
    new = Store(db, IK)
    assert new.schema_version() == SCHEMA_VERSION
    assert new.load_sessions() == [session(1), session(2)]
    assert new.load_installations() == [i]
    assert [s.version for s in new.load_own_spks()] == [1]
    assert new.get_meta("installation_id") == b"x"
    assert new.load_peer_replies() == {OTHER.public_key(): 5}
    new.close()
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT count(*) FROM sessions WHERE mac IS NULL").fetchone() == (0,)
    raw.execute("UPDATE sessions SET mac=NULL WHERE sid=?", (sid_of(2),))
    raw.execute("UPDATE installations SET enabled=0")
    raw.commit()
    raw.close()
    again = Store(db, IK)
    with pytest.raises(StoreCorrupt):
        again.load_installations()
    with pytest.raises(StoreCorrupt):
        again.load_peer_sessions(OTHER.public_key(), "inst-2")
    assert [r.sid for r in again.load_peer_sessions(OTHER.public_key(), "inst-1")] == [sid_of(1)]
    again.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    Store(db, IK).close()
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(StoreVersionTooNew):
        Store(db, IK)


def test_meta_wrapping_rows_are_not_writable(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", IK)
    with pytest.raises(ValueError):
        s.submit([PutMeta("wrap_point", b"x")])
    assert s.last_submitted() == 0  # rejected before queueing: no state change
    s.close()


def test_queued_batches_share_one_commit(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", IK)
    seqs = [s.submit([PutSession(session(i))]) for i in range(1, 6)]
    assert s.durable() == 0 and s.commits == 0
    s.wait(seqs[-1])
    assert s.durable() == seqs[-1] and s.commits == 1
    s.wait(seqs[0])  # already covered: no further commit
    assert s.commits == 1
    assert len(s.load_sessions()) == 5
    s.close()


def test_a_session_written_by_several_batches_of_one_commit_is_sealed_once_as_its_last_version(
        tmp_path: Path) -> None:
    """Sealing moved to the commit leader: of the versions of one session queued for one commit only the last is
    sealed and stored (the others would be overwritten in the same transaction); a delete between versions and
    other sessions keep their order and content."""
    s = Store(tmp_path / "db", IK)
    sealed: list[bytes] = []
    seal = s._codec.seal

    def counting(value: bytes, *ad: bytes) -> bytes:
        sealed.append(value)
        return seal(value, *ad)

    s._codec.seal = counting  # type: ignore[method-assign]
    for k in range(5):  # five requests rewrite session 1; session 2 is written once, between them
        s.submit([PutSession(session(1, state=b"v%d" % k, send_hwm=64 + k))])
        if k == 2:
            s.submit([PutSession(session(2))])
    s.submit([DeleteSession(session(3).sid)])
    s.sync()
    assert s.commits == 1
    assert sealed.count(b"v4") == 1 and not any(v in sealed for v in (b"v0", b"v1", b"v2", b"v3"))
    assert len(sealed) == 4  # sk + state of the last version of session 1, and of session 2
    rows = {r.sid: r for r in s.load_sessions()}
    assert rows[session(1).sid].state == b"v4" and rows[session(1).sid].send_hwm == 68
    assert rows[session(2).sid].state == session(2).state
    # a session put, deleted and put again in one commit ends as its last put; put then deleted ends deleted
    s.submit([PutSession(session(3, state=b"first"))])
    s.submit([DeleteSession(session(3).sid)])
    s.submit([PutSession(session(3, state=b"again"))])
    s.submit([PutSession(session(4))])
    s.submit([DeleteSession(session(4).sid)])
    s.sync()
    rows = {r.sid: r for r in s.load_sessions()}
    assert rows[session(3).sid].state == b"again" and session(4).sid not in rows
    s.close()


def test_concurrent_writers_all_become_durable(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", IK)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            barrier.wait()
            for j in range(20):
                s.write([PutSession(session(1, ephemeral=b"\x03" + bytes([k, j]) * 16))])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(s.load_sessions()) == 160
    assert 1 <= s.commits <= 160
    s.close()


def test_failed_commit_poisons_the_store(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", IK)
    bad = inst("x")
    bad.installation_id = None  # type: ignore[assignment]  # NOT NULL violation at commit time
    seq = s.submit([PutInstallation(bad)])
    with pytest.raises(StoreFailed):
        s.wait(seq)
    with pytest.raises(StoreFailed):
        s.submit([PutSession(session(1))])
    assert s.load_installations() == []  # the failed batch left nothing behind
    s.close()


_CHILD = r"""
import sys
from agent.daemon.store import Store, PutSession, SessionRecord
from agent.daemon.store.rows import session_id
from backends.memory import MemoryKey
s = Store(sys.argv[1], MemoryKey(b"\x11" * 32))
i = 0
while True:
    i += 1
    e = i.to_bytes(16, "big")
    s.write([PutSession(SessionRecord(session_id(b"\x02" * 33, "x", b"b", e), b"\x02" * 33, "x", b"b", e, True,
                                      False, False, i, i, i, b"k" * 32, b"state"))])
    print(i, flush=True)
"""


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = 0
    for line in proc.stdout:
        acked = int(line)
        if acked >= 200:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = Store(db, IK)
    sids = {int.from_bytes(r.ephemeral, "big") for r in s.load_sessions()}
    assert set(range(1, acked + 1)) <= sids  # everything the child reported as written is there
    s.close()


@pytest.mark.parametrize(
    "table,column,value",
    [
        ("sessions", "sid", 5),
        ("sessions", "installation_id", b"bytes-not-text"),
        ("sessions", "send_hwm", "ten"),
        ("installations", "identity", "text"),
        ("installations", "timestamp_ns", 1.5),
        ("own_spks", "public", 7),
    ],
)
def test_wrongly_typed_rows_are_reported_not_misread(tmp_path: Path, table: str, column: str, value: object) -> None:
    db = tmp_path / "state.db"
    s = Store(db, IK)
    s.write([PutSession(session(1)), PutInstallation(inst("a")),
             PutOwnSpk(OwnSpkRecord(1, b"\x02" + b"\x55" * 32, 10, None, False))])
    s.close()
    c = sqlite3.connect(db)
    c.execute(f"UPDATE {table} SET {column}=?", (value,))
    c.commit()
    c.close()
    s2 = Store(db, IK)
    loader = {"sessions": s2.load_sessions, "installations": s2.load_installations, "own_spks": s2.load_own_spks}
    with pytest.raises(StoreCorrupt):
        loader[table]()
    s2.close()


@pytest.mark.parametrize("value", [b"\x02" + b"\x00" * 32, b"short", 12])
def test_damaged_key_wrapping_is_a_key_mismatch(tmp_path: Path, value: object) -> None:
    db = tmp_path / "state.db"
    Store(db, IK).close()
    c = sqlite3.connect(db)
    c.execute("UPDATE meta SET value=? WHERE key='wrap_point'", (value,))
    c.commit()
    c.close()
    with pytest.raises(StoreKeyMismatch):
        Store(db, IK)


def test_delete_session_removes_the_row(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", IK)
    s.write([PutSession(session(1)), PutSession(session(2))])
    s.write([DeleteSession(sid_of(1)), DeleteSession(b"absent" * 3)])
    assert [r.sid for r in s.load_sessions()] == [sid_of(2)]
    s.close()


def test_waiting_for_an_unsubmitted_batch_is_an_error(tmp_path: Path) -> None:
    s = Store(tmp_path / "db", IK)
    s.wait(0)  # nothing submitted, nothing to wait for
    with pytest.raises(ValueError):
        s.wait(1)
    s.close()


def test_retention_sweep_query_uses_an_index(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db", IK)
    s.write([PutSession(session(1)), PutSession(session(2, expired=True))])
    assert [r.sid for r in s.expired_before(1 << 62)] == [session(2).sid]
    assert s.expired_before(-1) == []
    plan = " ".join(str(r) for r in s._conn.execute(
        "EXPLAIN QUERY PLAN SELECT sid FROM sessions WHERE expired=1 AND last_used_ns<=?", (0,)))
    assert "sessions_by_expiry" in plan
    s.close()


def test_on_demand_reads_see_committed_rows_only(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db", IK)
    s.write([PutSession(session(1)), PutSession(session(2)), PutInstallation(inst("a")), PutInstallation(inst("b"))])
    assert s.load_peer_sessions(OTHER.public_key(), "inst-1") == [session(1)]  # unsealed, other rows excluded
    assert s.load_peer_sessions(OTHER.public_key(), "inst-9") == []
    assert s.session_peer(session(2).sid) == (OTHER.public_key(), "inst-2")
    assert s.session_peer(b"\x00" * 16) is None
    assert s.load_installations_of(OTHER.public_key()) == [inst("a"), inst("b")]
    assert s.load_installations_of(IK.public_key()) == []
    assert [r.sid for r in s.session_summaries()] == [session(1).sid, session(2).sid]
    seq = s.submit([PutSession(session(1, confirmed=True)), DeleteSession(session(2).sid)])
    assert s.load_peer_sessions(OTHER.public_key(), "inst-1") == [session(1)]  # queued, not yet durable
    assert s.session_peer(session(2).sid) is not None
    s.wait(seq)
    assert s.load_peer_sessions(OTHER.public_key(), "inst-1") == [session(1, confirmed=True)]
    assert s.session_peer(session(2).sid) is None
    s.close()
    with pytest.raises(StoreFailed):
        s.load_installations_of(OTHER.public_key())


@pytest.mark.parametrize(
    "table,column,value",
    [
        ("sessions", "identity", b"\x02" + b"\xbb" * 32),  # the attack: a row re-attributed to another peer
        ("sessions", "installation_id", "inst-9"),
        ("sessions", "send_hwm", 1),  # a lowered mark would let a restart reuse message keys
        ("sessions", "expired", 1),
        ("sessions", "confirmed", 1),
        ("sessions", "bundle_id", b"\x02" + b"\x77" * 32),
        ("sessions", "last_used_ns", 5),
        ("installations", "spk", b"\x02" + b"\x66" * 32),
        ("installations", "enabled", 0),
        ("installations", "spk_version", 99),
        ("installations", "identity", b"\x02" + b"\xbb" * 32),
        ("own_spks", "destroyed", 1),
        ("own_spks", "expired_ns", 5),
        ("own_spks", "public", b"\x02" + b"\x44" * 32),
        ("meta", "value", b"another-installation"),
        ("peer_replies", "at_ns", 0),
        ("strangers", "learned_ns", 0),  # a stranger made to look newest would be the last one forgotten
        ("strangers", "identity", b"\x02" + b"\xbb" * 32),
    ],
)
def test_an_offline_edit_of_any_column_is_refused(tmp_path: Path, table: str, column: str, value: object) -> None:
    db = tmp_path / "state.db"
    s = Store(db, IK)
    s.write([PutSession(session(1)), PutInstallation(inst("a")), PutMeta("installation_id", b"x"),
             PutOwnSpk(OwnSpkRecord(1, b"\x02" + b"\x55" * 32, 10, None, False)),
             PutPeerReply(OTHER.public_key(), 9), PutStranger(OTHER.public_key(), 11)])
    s.close()
    c = sqlite3.connect(db)
    where = " WHERE key='installation_id'" if table == "meta" else ""
    c.execute(f"UPDATE {table} SET {column}=?{where}", (value,))
    c.commit()
    c.close()
    s2 = Store(db, IK)
    read = {"sessions": s2.load_sessions, "installations": s2.load_installations, "own_spks": s2.load_own_spks,
            "meta": lambda: s2.get_meta("installation_id"), "peer_replies": s2.load_peer_replies,
            "strangers": s2.load_strangers}
    with pytest.raises(StoreCorrupt):
        read[table]()
    if table == "sessions":  # every path that reads the row refuses it; listings leave it out
        with pytest.raises(StoreCorrupt):
            s2.session_peer(sid_of(1))
        assert s2.session_summaries() == []
    s2.close()


def test_a_session_row_copied_under_another_id_is_refused(tmp_path: Path) -> None:
    """A whole row (MAC and sealed values included) filed under another session's id: the id is recomputed."""
    db = tmp_path / "state.db"
    c = _written_then_opened_raw(db, PutSession(session(1)))
    c.execute("INSERT INTO sessions SELECT ?, identity, installation_id, bundle_id, ephemeral, initiator, confirmed,"
              " expired, created_ns, last_used_ns, send_hwm, sk, state, mac FROM sessions", (sid_of(2),))
    c.commit()
    c.close()
    s2 = Store(db, IK)
    with pytest.raises(StoreCorrupt):  # the id is under the MAC (and recomputed from the parts as well)
        s2.load_sessions()
    assert [x.sid for x in s2.session_summaries()] == [sid_of(1)]
    s2.close()


def test_sealed_state_from_an_older_version_of_the_row_is_refused(tmp_path: Path) -> None:
    """The sealed ratchet state is bound to the row's MAC: an older state blob (with its older, valid seal) put
    back beside the newer counters does not open."""
    db = tmp_path / "state.db"
    s = Store(db, IK)
    s.write([PutSession(session(1, send_hwm=64))])
    c = sqlite3.connect(db)
    (old_state,) = c.execute("SELECT state FROM sessions").fetchone()
    s.write([PutSession(session(1, send_hwm=128, state=b"newer"))])
    s.close()
    c.execute("UPDATE sessions SET state=?", (old_state,))
    _commit_then_sessions_refused(c, db)


def test_a_peer_reply_time_is_deleted_by_its_op(tmp_path: Path) -> None:
    """DeletePeerReply removes the row (the session manager forgets reply times older than its interval)."""
    s = Store(tmp_path / "s.db", IK)
    s.write([PutPeerReply(OTHER.public_key(), 7), PutPeerReply(IK.public_key(), 8)])
    s.write([DeletePeerReply(OTHER.public_key()), DeletePeerReply(b"\x02" + b"\x00" * 32)])  # absent: no error
    assert s.load_peer_replies() == {IK.public_key(): 8}
    s.close()
    assert Store(tmp_path / "s.db", IK).load_peer_replies() == {IK.public_key(): 8}


def test_an_installation_is_deleted_by_its_op_and_sessions_are_found_by_identity(tmp_path: Path) -> None:
    """DeleteInstallation removes one row (a stranger's bundle, evicted); has_sessions_with answers from the
    committed sessions (the session manager checks it before it forgets an identity)."""
    s = Store(tmp_path / "s.db", IK)
    s.write([PutInstallation(inst("a")), PutInstallation(inst("b"))])
    s.write([DeleteInstallation(OTHER.public_key(), "a"), DeleteInstallation(IK.public_key(), "b")])
    assert [r.installation_id for r in s.load_installations_of(OTHER.public_key())] == ["b"]
    assert not s.has_sessions_with(OTHER.public_key())
    s.write([PutSession(session(1))])
    assert s.has_sessions_with(OTHER.public_key()) and not s.has_sessions_with(IK.public_key())
    s.close()


def test_a_stranger_row_is_written_read_and_deleted(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", IK)
    s.write([PutStranger(OTHER.public_key(), 7), PutStranger(IK.public_key(), 8)])
    s.write([DeleteStranger(OTHER.public_key())])
    s.close()
    assert Store(tmp_path / "s.db", IK).load_strangers() == {IK.public_key(): 8}
