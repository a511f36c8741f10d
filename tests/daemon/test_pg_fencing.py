"""Fencing and partitions of the shared PostgreSQL store, against a real server.

The protection under test (agent/daemon/store/postgres.py, "Fencing"): every commit runs on the one connection
whose server backend holds the store-wide advisory lock. When that backend ends (the agent was cut off from the
database, or an operator or the server ended it) the server releases the lock, another agent takes the turn, and
the cut-off agent's pending commit must fail rather than land on top of the other agent's writes.

A network partition is played on one machine by ending the agent's lock-connection backend with
``pg_terminate_backend`` while it is under load (what the server does to a partitioned client once its
keepalives give up), also while the agent is stopped (SIGSTOP) so that it resumes in the middle of a turn it no
longer holds: the agent must hand out nothing it could not make durable, and it must not reuse a message key
after it reconnects.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from collections.abc import Iterator

import pytest

from agent.client import AgentClient
from agent.daemon.store import (DeleteInstallation, DeletePeerReply, InstallationRecord, PutInstallation, PutMeta,
                                PutPeerReply, StoreUnavailable)
from agent.daemon.store.postgres import PgStore
from backends.base import Backend
from backends.memory import MemoryKey
from tests.daemon.agentproc import AgentFactory, AgentProc
from tests.daemon.test_pg_agents import _add_peer, _agents, _identity, _Load, db_url, peer, pg, token  # noqa: F401
from tests.helpers.postgres import PgServer
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken
from tests.proof.common import Peer, check_pg_store

__all__: list[str] = []


def _dbname(url: str) -> str:
    return url.split("///", 1)[1].split("?", 1)[0]


def _lock_backend(pg: PgServer, url: str, *, agent_id: str | None = None, pid: int | None = None) -> int:
    """The server backend of an agent's lock connection, from the store's ``agents`` table."""
    where = f"agent_id = '{agent_id}'" if agent_id is not None else f"pid = {pid}"
    out = pg.sql(_dbname(url), f"SELECT backend_pid FROM agents WHERE {where}")
    assert out, f"no agent registered with {where}"
    return int(out.splitlines()[-1])


def _terminate(pg: PgServer, url: str, backend_pid: int) -> None:
    assert pg.sql(_dbname(url), f"SELECT pg_terminate_backend({backend_pid})") == "t"


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[PgStore, PgStore]]:  # noqa: F811 - the fixture imported above
    key = MemoryKey.generate()
    a = PgStore(db_url, key, create=True, agent_id="agent-a")
    b = PgStore(db_url, key, agent_id="agent-b")
    yield a, b
    for s in (a, b):
        try:
            s.close()
        except Exception:  # noqa: BLE001 - a store whose connection was ended closes what it can
            pass


def test_a_commit_after_losing_the_turn_does_not_land(
        stores: tuple[PgStore, PgStore], pg: PgServer, db_url: str) -> None:  # noqa: F811
    a, b = stores
    a.enter()  # A holds the store-wide lock ...
    _terminate(pg, db_url, _lock_backend(pg, db_url, agent_id="agent-a"))  # ... and is cut off

    # the server released A's lock with its backend: B takes the turn at once, no timeout, no guess
    entered = threading.Event()

    def b_turn() -> None:
        b.enter()
        entered.set()

    th = threading.Thread(target=b_turn, daemon=True)
    th.start()
    assert entered.wait(15.0), "B still waits for a lock whose holder's backend is gone"
    b.write([PutMeta("fence", b"written by B in its turn")])
    b.leave()

    # A still believes it is inside its turn; its commit must fail, not overwrite B's row
    epoch = a.cache_epoch
    with pytest.raises(StoreUnavailable):
        a.write([PutMeta("fence", b"written by A after it lost the turn")])
    a.leave()
    assert b.get_meta("fence") == b"written by B in its turn"
    assert a.get_meta("fence") == b"written by B in its turn"
    assert a.cache_epoch != epoch  # A drops what it cached: it may be behind B's writes

    # A comes back: a new lock connection, a new turn, and it knows to reload (another agent wrote)
    epoch = a.cache_epoch
    a.enter()
    try:
        assert a.cache_epoch != epoch
        a.write([PutMeta("fence", b"A again, in a turn of its own")])
    finally:
        a.leave()
    assert b.get_meta("fence") == b"A again, in a turn of its own"
    assert _lock_backend(pg, db_url, agent_id="agent-a") == a._lock_conn.info.backend_pid  # doctor sees the new one


def test_the_other_agent_waits_while_the_turn_is_held(stores: tuple[PgStore, PgStore]) -> None:
    """The lock really excludes: while A is inside a turn, B's turn does not start."""
    a, b = stores
    a.enter()
    entered = threading.Event()

    def b_turn() -> None:
        b.enter()
        entered.set()
        b.leave()

    th = threading.Thread(target=b_turn, daemon=True)
    th.start()
    assert not entered.wait(0.5)
    a.leave()
    assert entered.wait(5.0)
    th.join(5)


@pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")
def test_partition_of_one_agent_under_load_no_undurable_send_no_key_reuse(
        agents: AgentFactory, token: SoftHSMToken, db_url: str, peer: Peer, pg: PgServer) -> None:  # noqa: F811
    a, b = _agents(agents, token, db_url, 2)
    me = _identity(a)
    _add_peer(a, peer)
    load = _Load(peer)
    threads = [load.run(x) for x in (a, b, a, b)]
    time.sleep(1.0)
    cuts = 0
    for _ in range(3):  # cut A off again and again, mid-load
        _terminate(pg, db_url, _lock_backend(pg, db_url, pid=a.pid))
        cuts += 1
        time.sleep(0.4)
    for _ in range(4):
        # the classic fencing case: A stalls (a pause, a partition) wherever it is, perhaps inside a turn with a
        # batch half built; the server ends its backend and B goes on; then A resumes believing it holds the turn
        os.kill(a.pid, signal.SIGSTOP)
        try:
            _terminate(pg, db_url, _lock_backend(pg, db_url, pid=a.pid))
            cuts += 1
            time.sleep(0.5)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        time.sleep(0.5)
    time.sleep(1.0)
    load.stop.set()
    for t in threads:
        t.join(60)
    assert a.alive() and b.alive()
    # the only errors are the database ones A answered while cut off: clear, and never a crash
    for e in load.errors:
        assert "STATE_ERROR" in e or "database" in e, e
    # everything handed out decrypts at the peer, no key was used twice, and every position handed out is
    # below its session's durable mark in the database (nothing was sent on state that was not durable)
    load.check_peer(me)
    handed = [(pos[2], pos[3]) for pos in load.ledger.seen]
    token.activate()  # this process opens the same token for the store check
    backend = _home_backend(a)
    try:
        report = check_pg_store(db_url, backend.identity(), handed=handed)
    finally:
        backend.close()
    assert report.problems == []
    # after the cuts A serves again through a new connection, beyond every position either agent handed out
    load2 = _Load(peer)
    load2.ledger.seen = dict(load.ledger.seen)
    for t in [load2.run(x, 15) for x in (a, b)]:
        t.join(60)
    assert not load2.errors, load2.errors[:3]
    load2.check_peer(me)
    with AgentClient(a.sock) as c:
        assert c.encrypt(peer.identity, b"after the partition")
    assert cuts == 7 and len(load.handed) > 0


def _home_backend(agent: AgentProc) -> Backend:
    """The agent home's backend, opened in this process (the same SoftHSM2 token) for the store check."""
    from backends.home import load_config, open_backend

    home = str(agent.home)
    pin = agent.extra_env["KEYAGENT_PIN"]
    return open_backend(load_config(home), home=home, pin_source=lambda _w: pin)


def test_a_peer_reply_time_is_deleted_by_its_op(stores: tuple[PgStore, PgStore]) -> None:
    """The shared store forgets a reply time like the embedded one (the generic delete of its table)."""
    a, b = stores
    peer_a, peer_b = MemoryKey(b"\x51" * 32).public_key(), MemoryKey(b"\x52" * 32).public_key()
    a.enter()
    try:
        a.write([PutPeerReply(peer_a, 7), PutPeerReply(peer_b, 8)])
        a.write([DeletePeerReply(peer_a)])
    finally:
        a.leave()
    b.enter()
    try:
        assert b.load_peer_replies() == {peer_b: 8}
    finally:
        b.leave()


def test_an_installation_is_deleted_by_its_op_and_sessions_are_found_by_identity(
        stores: tuple[PgStore, PgStore]) -> None:
    """DeleteInstallation and has_sessions_with on the shared store, as on the embedded one."""
    a, b = stores
    peer_key = MemoryKey(b"\x53" * 32).public_key()
    rec = InstallationRecord(peer_key, "a", MemoryKey(b"\x54" * 32).public_key(), 1, 1, 1_700_000_000 * 10**9, True, 5)
    a.enter()
    try:
        a.write([PutInstallation(rec), PutInstallation(replace(rec, installation_id="b"))])
        a.write([DeleteInstallation(peer_key, "a")])
        assert not a.has_sessions_with(peer_key)
    finally:
        a.leave()
    b.enter()
    try:
        assert [r.installation_id for r in b.load_installations_of(peer_key)] == ["b"]
    finally:
        b.leave()


def test_a_schema_2_store_gains_the_strangers_table(pg: PgServer, db_url: str) -> None:  # noqa: F811
    """A store an agent before the stranger cap made (schema 2) is migrated when the next agent opens it."""
    from agent.daemon.store.postgres import PG_SCHEMA_VERSION

    key = MemoryKey.generate()
    first = PgStore(db_url, key, create=True, agent_id="agent-a")
    first.close()
    pg.sql(_dbname(db_url), "DROP TABLE strangers")
    pg.sql(_dbname(db_url), "UPDATE keyagent_schema SET version = 2")
    again = PgStore(db_url, key, agent_id="agent-b")
    try:
        assert again.schema_version() == PG_SCHEMA_VERSION == 3
        assert again.load_strangers() == {}
    finally:
        again.close()
