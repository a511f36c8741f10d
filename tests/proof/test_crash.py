"""CI-sized crash harness (5 trials; ``python -m tests.proof.crash --trials 50`` is the full run), and
negative controls showing that the checkers it relies on do catch what they look for."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from agent.core.wire import decode_protocol_message, encode
from agent.daemon.store import PutSession, Store
from backends.memory import MemoryKey
from tests.helpers.postgres import PgServer, require_postgres
from tests.proof.common import Peer, PositionLedger, check_pg_store, check_store, dr_positions
from tests.helpers.softhsm import SOFTHSM_MODULE
from tests.proof.crash import run_crash_trials


def test_five_kill_9_trials_keep_every_promise(tmp_path: Path) -> None:
    result = run_crash_trials(5, clients=6, seed=int.from_bytes(os.urandom(4), "big"), min_run=0.2, max_run=0.5,
                              root=tmp_path)
    assert result.violations == []
    assert result.trials == 5
    # the run really did what it claims: traffic both ways and re-checks after restarts
    assert result.handed_ciphertexts > 0 and result.peer_decrypted >= result.handed_ciphertexts
    assert result.handed_plaintexts > 0
    assert result.rechecked_plaintexts + result.rechecked_confirms > 0
    assert result.requests_cut_by_kill > 0


@pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")
def test_three_kill_9_trials_with_the_identity_on_a_softhsm_token(tmp_path: Path) -> None:
    result = run_crash_trials(3, clients=4, seed=int.from_bytes(os.urandom(4), "big"), min_run=0.2, max_run=0.5,
                              root=tmp_path, token=True)
    assert result.violations == []
    assert result.trials == 3 and result.handed_ciphertexts > 0 and result.peer_decrypted >= result.handed_ciphertexts


@pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")
def test_three_kill_9_trials_on_the_postgresql_store(tmp_path: Path) -> None:
    require_postgres()
    result = run_crash_trials(3, clients=4, seed=int.from_bytes(os.urandom(4), "big"), min_run=0.3, max_run=0.6,
                              root=tmp_path, store="postgresql")
    assert result.violations == []
    assert result.trials == 3 and result.handed_ciphertexts > 0 and result.peer_decrypted >= result.handed_ciphertexts
    assert result.handed_plaintexts > 0 and result.rechecked_plaintexts + result.rechecked_confirms > 0


@pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")
def test_four_trials_kill_9_one_of_two_agents_sharing_the_postgresql_store(tmp_path: Path) -> None:
    require_postgres()
    result = run_crash_trials(4, clients=4, seed=int.from_bytes(os.urandom(4), "big"), min_run=0.3, max_run=0.6,
                              root=tmp_path, store="postgresql", agents=2)
    assert result.violations == []
    assert result.trials == 4 and result.handed_ciphertexts > 0 and result.peer_decrypted >= result.handed_ciphertexts
    assert result.served_after_kill > 0  # the surviving agent went on serving after every kill, without errors
    assert result.requests_cut_by_kill > 0


def test_check_pg_store_passes_live_rows_and_flags_a_position_above_the_mark(tmp_path: Path) -> None:
    """The negative control of the PostgreSQL checks: the invariant check reads the server's rows and catches
    a handed-out position at or above the durable mark, and a session whose mark is below its next send."""
    import time

    from agent.daemon.sessions import SessionManager
    from agent.daemon.store.postgres import PgStore
    from tests.sessions.harness import MemoryBackend

    require_postgres()
    with PgServer() as pg:
        key = MemoryKey.generate()
        store = PgStore(pg.url(), key, create=True)
        mgr = SessionManager(MemoryBackend(key), store, clock=time.time_ns, rng=os.urandom)
        bob = Peer(tmp_path)
        try:
            msg = mgr.encrypt(bob.identity, b"one", bob.bundle()).message
            (pos, _), = dr_positions(msg)
            chain, n = pos[2], pos[3]
            ok = check_pg_store(pg.url(), key, handed=[(chain, n)])
            assert ok.problems == [] and ok.sessions == 1
            bad = check_pg_store(pg.url(), key, handed=[(chain, 10_000)])
            assert any("durable mark" in p for p in bad.problems)
            mgr.close()
            store = PgStore(pg.url(), key)
            (rec,) = store.load_sessions()
            rec.send_hwm = 0
            store.write([PutSession(rec)])
            store.close()
            low = check_pg_store(pg.url(), key)
            assert any("above its mark" in p for p in low.problems)
        finally:
            bob.close()


def _conversation(tmp_path: Path) -> tuple[Peer, Peer, bytes]:
    alice, bob = Peer(tmp_path), Peer(tmp_path)
    msg = alice.mgr.encrypt(bob.identity, b"one", bob.bundle()).message
    return alice, bob, msg


def test_ledger_flags_a_position_reused_with_other_content(tmp_path: Path) -> None:
    alice, bob, msg = _conversation(tmp_path)
    try:
        ledger = PositionLedger()
        ledger.add(msg)
        ledger.add(msg)  # the very same bytes again: not a reuse
        assert ledger.reuses == []
        pm = decode_protocol_message(msg)
        entry = pm.encrypted_message[bob.mgr.installation_id]
        entry.payload = bytes([entry.payload[0] ^ 1]) + entry.payload[1:]
        ledger.add(encode(pm))
        assert ledger.reuses == [dr_positions(msg)[0][0]]
    finally:
        alice.close()
        bob.close()


def test_check_store_passes_a_live_home_and_flags_broken_ones(tmp_path: Path) -> None:
    alice, bob, msg = _conversation(tmp_path)
    try:
        (pos, _), = dr_positions(msg)
        chain, n = pos[2], pos[3]
        db = alice.dir / "state.db"
        key = alice.backend.identity()
        ok = check_store(db, key, handed=[(chain, n)], scratch=tmp_path)
        assert ok.problems == [] and ok.sessions == 1
        # a ciphertext at or above the durable reservation mark would be reused after a crash
        bad = check_store(db, key, handed=[(chain, 10_000)], scratch=tmp_path)
        assert any("durable mark" in p for p in bad.problems)
        # a session whose mark is below its next send position
        store = Store(db, key)
        (rec,) = store.load_sessions()
        rec.send_hwm = 0
        store.write([PutSession(rec)])
        store.close()
        low = check_store(db, key, scratch=tmp_path)
        assert any("above its mark" in p for p in low.problems)
        # the wrong identity cannot open it at all
        try:
            check_store(db, MemoryKey.generate(), scratch=tmp_path)
        except Exception as exc:  # StoreKeyMismatch
            assert "identity" in str(exc) or "sealed" in str(exc)
        else:
            raise AssertionError("a foreign identity opened the store")
    finally:
        alice.close()
        bob.close()


def test_check_store_flags_a_damaged_database_file(tmp_path: Path) -> None:
    alice, bob, _ = _conversation(tmp_path)
    try:
        db = alice.dir / "state.db"
        alice.mgr.close()
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
        conn.close()
        raw = bytearray(db.read_bytes())
        assert len(raw) == pages * size
        # scribble over an index page's cell area: the b-tree no longer matches its table
        for i in range(size + 200, 2 * size - 8):
            raw[i] = 0xA5
        db.write_bytes(bytes(raw))
        try:
            report = check_store(db, alice.backend.identity(), scratch=tmp_path)
        except Exception:  # noqa: BLE001 - refusing to open it at all also counts as caught
            return
        assert report.problems, "a scribbled database passed the integrity check"
    finally:
        bob.close()
