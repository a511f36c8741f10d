"""The rollback anchor's pure parts: its decision table, its value's parser, and the guard's write order.

The guard is driven here over a real SQLite store and an in-memory slot that records every write, so the order
of the two writes and their count can be asserted; tests/daemon/test_rollback.py does the same with real
agents and a SoftHSM2 token.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.daemon.rollback import (
    ANCHOR_META,
    Anchor,
    FileAnchor,
    RollbackGuard,
    Superseded,
    expire_all_sessions,
    verdict,
)
from agent.daemon.store import SqliteStore
from agent.daemon.store.rows import PutSession, SessionRecord, session_id
from agent.home_trust import UnsafeHome
from backends.memory import MemoryKey

R, S = True, False  # running, stopped


@pytest.mark.parametrize("stored, held, shared, expect", [
    (None, None, False, None),
    (Anchor(4, S), Anchor(4, S), False, None),
    (Anchor(4, R), Anchor(4, R), False, "did not stop cleanly"),
    (Anchor(4, S), Anchor(4, R), False, "did not stop cleanly"),
    (Anchor(3, S), Anchor(4, S), False, "older than its anchor"),
    (Anchor(3, R), Anchor(4, R), False, "older than its anchor"),
    (Anchor(5, S), Anchor(4, S), False, "anchor is older"),
    (Anchor(4, S), None, False, "missing"),
    (None, Anchor(4, S), False, "no anchor"),
    (Anchor(4, R), Anchor(4, R), True, None),  # shared: running is normal
    (Anchor(5, R), Anchor(4, R), True, None),  # shared: a bump that crashed between its writes
    (Anchor(3, R), Anchor(4, R), True, "older than its anchor"),
    (Anchor(3, R), None, True, "missing"),
])
def test_the_decision_table(stored: Anchor | None, held: Anchor | None, shared: bool, expect: str | None) -> None:
    got = verdict(stored, held, shared=shared)
    assert (got is None) if expect is None else (got is not None and expect in got)


def test_anchor_values_round_trip_and_anything_else_counts_as_missing() -> None:
    for a in (Anchor(0, S), Anchor(1, R), Anchor(2**64 - 1, S)):
        assert Anchor.decode(a.encode()) == a
    good = Anchor(7, R).encode()
    assert Anchor.decode(good[:-1]) is None  # truncated
    assert Anchor.decode(good + b"\x00") is None  # oversize
    assert Anchor.decode(good[:8] + b"\x00") is None  # unknown state
    assert Anchor.decode(good[:8] + b"\x03") is None
    assert Anchor.decode(b"") is None and Anchor.decode(None) is None
    flipped = [Anchor.decode(bytes([b ^ (1 << bit) if i == k else b for i, b in enumerate(good)]))
               for k in range(len(good)) for bit in range(8)]
    assert all(f != Anchor(7, R) for f in flipped)  # every bit flip gives another value or none
    with pytest.raises(OverflowError):
        Anchor(2**64, R).encode()


class Slot:
    where = "memory"

    def __init__(self) -> None:
        self.value: bytes | None = None
        self.writes: list[bytes] = []
        self.reads = 0

    def read(self) -> bytes | None:
        self.reads += 1
        return self.value

    def write(self, value: bytes) -> None:
        self.writes.append(value)
        self.value = value


def _store(path: Path, key: MemoryKey) -> SqliteStore:
    return SqliteStore(str(path), key)


def _session(n: int) -> SessionRecord:
    ident, iid, spk, eph = bytes([2]) + bytes([n]) * 32, f"iid-{n}", bytes([3]) * 33, bytes([2]) + bytes([n + 1]) * 32
    return SessionRecord(sid=session_id(ident, iid, spk, eph), identity=ident, installation_id=iid, bundle_id=spk,
                         ephemeral=eph, initiator=True, confirmed=True, expired=False, created_ns=n,
                         last_used_ns=n, send_hwm=64, sk=bytes(32), state=b"state")


def test_runs_cost_two_writes_and_a_crash_or_a_restore_expires_every_session(tmp_path: Path) -> None:
    key, slot = MemoryKey.generate(), Slot()
    store = _store(tmp_path / "s.db", key)
    store.write([PutSession(_session(n)) for n in range(5)])
    for _ in range(3):  # clean runs
        guard = RollbackGuard(store, lambda name: slot)
        guard.start()
        assert guard.rekeyed == ""
        guard.stop()
    assert [Anchor.decode(w) for w in slot.writes] == [Anchor(e, e % 2 == 1) for e in range(1, 7)]
    assert Anchor.decode(store.get_meta(ANCHOR_META)) == Anchor(6, S)
    assert not any(s.expired for s in store.session_summaries())
    guard = RollbackGuard(store, lambda name: slot)
    guard.start()  # ... and then a crash: no stop
    crashed = RollbackGuard(store, lambda name: slot)
    crashed.start()
    assert "did not stop cleanly" in crashed.rekeyed and crashed.rekeyed_sessions == 5
    assert all(s.expired for s in store.session_summaries())
    store.close()


def test_the_anchor_is_written_before_the_store_so_a_crash_between_leaves_the_store_behind(tmp_path: Path) -> None:
    key, slot = MemoryKey.generate(), Slot()
    store = _store(tmp_path / "s.db", key)
    RollbackGuard(store, lambda name: slot).start()
    before = store.get_meta(ANCHOR_META)

    class Crash(Exception):
        pass

    def crash_on_store_write(ops: object) -> None:
        raise Crash

    guard = RollbackGuard(store, lambda name: slot)
    original = store.write
    store.write = crash_on_store_write  # type: ignore[method-assign]
    with pytest.raises(Crash):
        guard.start()
    store.write = original  # type: ignore[method-assign]
    assert store.get_meta(ANCHOR_META) == before and Anchor.decode(slot.value) == Anchor(2, R)
    assert "older than its anchor" in (verdict(Anchor.decode(before), Anchor.decode(slot.value), shared=False) or "")
    store.close()


def test_a_running_guard_reads_the_anchor_at_a_bounded_rate_and_refuses_once_it_moved(tmp_path: Path) -> None:
    key, slot, now = MemoryKey.generate(), Slot(), [0.0]
    store = _store(tmp_path / "s.db", key)
    guard = RollbackGuard(store, lambda name: slot, clock=lambda: now[0], check_interval=2.0)
    guard.start()
    reads = slot.reads
    for _ in range(100):
        guard.check()
    assert slot.reads == reads + 1  # one read, then none for 2 s
    slot.value = Anchor(guard.epoch + 1, R).encode()  # a copy started
    now[0] += 1.0
    guard.check()  # not yet looked
    now[0] += 1.5
    with pytest.raises(Superseded):
        guard.check()
    writes = len(slot.writes)
    guard.stop()  # not ours any more: untouched
    assert len(slot.writes) == writes and guard.superseded
    store.close()


def test_expiring_every_session_is_one_write_of_rows_that_still_authenticate(tmp_path: Path) -> None:
    key = MemoryKey.generate()
    store = _store(tmp_path / "s.db", key)
    store.write([PutSession(_session(n)) for n in range(3)])
    assert expire_all_sessions(store) == 3 and expire_all_sessions(store) == 0
    for n in range(3):
        (rec,) = store.load_peer_sessions(_session(n).identity, _session(n).installation_id)
        assert rec.expired and rec.state == b"state" and rec.send_hwm == 64
    store.close()


def test_the_anchor_file_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    d = tmp_path / "anchors"
    slot = FileAnchor(d, "ab" * 16)
    assert slot.read() is None
    slot.write(Anchor(1, R).encode())
    assert slot.read() == Anchor(1, R).encode()
    assert (d.stat().st_mode & 0o777) == 0o700 and (slot.path.stat().st_mode & 0o777) == 0o600
    os.chmod(d, 0o777)
    with pytest.raises(UnsafeHome):
        slot.read()
    os.chmod(d, 0o700)
    slot.path.unlink()
    slot.path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeHome):
        slot.read()


def test_an_unreadable_token_anchor_does_not_stop_sending_and_is_read_again(tmp_path: Path) -> None:
    """Token away or logged out: the check is skipped (a copy could not have moved the anchor through it
    without failing too, and a copy re-keys anyway), and the next send reads it again."""
    from backends.errors import TokenAbsent

    key, slot, now = MemoryKey.generate(), Slot(), [0.0]
    store = _store(tmp_path / "s.db", key)
    guard = RollbackGuard(store, lambda name: slot, clock=lambda: now[0], check_interval=2.0)
    guard.start()
    real_read = slot.read

    def absent() -> bytes | None:
        raise TokenAbsent("unplugged")

    slot.read = absent  # type: ignore[method-assign]
    assert guard.check() is False
    slot.read = real_read  # type: ignore[method-assign]
    slot.value = Anchor(guard.epoch + 1, R).encode()
    with pytest.raises(Superseded):  # not rate-limited away: the failed read did not count as a check
        guard.check()
    store.close()
