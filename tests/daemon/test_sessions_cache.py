"""The session manager's bounded cache over the store: sessions and installations are loaded on demand and
dropped again, without a reused sending position, a gap on a clean reload, or a lost update.

A hub talks to more peers than its cache holds (one installation, one identity), so nearly every request loads
a session from its sealed row and drops another one.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.core.wire import decode_protocol_message
from agent.daemon.sessions import DecryptResult
from backends.memory import MemoryKey
from tests.sessions.harness import Clock, Device, World

HUB = MemoryKey(b"\x0c" * 32)
PEERS = [MemoryKey(bytes([0x20 + i]) * 32) for i in range(5)]


def _ok(got: object) -> DecryptResult:
    assert isinstance(got, DecryptResult), got
    return got


def _position(message: bytes, to: Device) -> tuple[bytes, int]:
    e = decode_protocol_message(message).encrypted_message[to.iid]
    return bytes(e.DR_header.key), int(e.DR_header.n)


def _world(tmp: Path) -> tuple[World, Device, list[Device]]:
    w = World(tmp, Clock())
    hub = w.device("hub", HUB, cache_peers=1, cache_identities=1)
    peers = [w.device(f"p{i}", k) for i, k in enumerate(PEERS)]
    for p in peers:  # every peer starts a session with the hub (the hub is the responder)
        _ok(hub.recv(p, p.send(hub, b"hello", hub.mgr.our_bundle()).message))
    return w, hub, peers


def _rounds(hub: Device, peers: list[Device], n: int, sent: dict[str, list[tuple[bytes, int]]]) -> None:
    for r in range(n):
        for p in peers:
            m = hub.send(p, b"to %d" % r).message
            sent[p.name].append(_position(m, p))
            assert _ok(p.recv(hub, m)).payload == b"to %d" % r
            got = _ok(hub.recv(p, p.send(hub, b"back %d" % r).message))
            assert got.payload == b"back %d" % r
            hub.mgr.confirm([got.confirm_ref])


def test_more_peers_than_the_cache_holds_all_talk_and_the_cache_stays_bounded(tmp_path: Path) -> None:
    _, hub, peers = _world(tmp_path)
    sent: dict[str, list[tuple[bytes, int]]] = {p.name: [] for p in peers}
    peak = 0
    for _ in range(3):
        _rounds(hub, peers, 1, sent)
        peak = max(peak, len(hub.mgr._cache._by_peer), len(hub.mgr._cache._by_identity))
    # dropping waits for an exact-position write to be durable, so the bound may be exceeded by a little
    assert peak <= 3 < len(peers)
    assert len(hub.mgr._cache.sessions) <= 3
    assert len(hub.mgr.list_sessions()) == len(peers)  # listed from the rows, not from the cache
    assert len(hub.mgr._store.load_sessions()) == len(peers)


def test_a_dropped_session_reloads_without_a_gap_or_a_reused_position(tmp_path: Path) -> None:
    _, hub, peers = _world(tmp_path)
    sent: dict[str, list[tuple[bytes, int]]] = {p.name: [] for p in peers}
    _rounds(hub, peers, 4, sent)
    for name, positions in sent.items():
        assert len(set(positions)) == len(positions), name
        # each reply of a peer starts a new sending chain of ours at 0; reloading never skipped a position
        assert all(n == 0 for _, n in positions), name
    # several messages in a row on one chain, interleaved with the other peers (each send drops a session)
    chains: dict[str, list[tuple[bytes, int]]] = {p.name: [] for p in peers}
    for r in range(4):
        for p in peers:
            m = hub.send(p, b"burst %d" % r).message
            chains[p.name].append(_position(m, p))
            assert _ok(p.recv(hub, m)).payload == b"burst %d" % r
    for name, positions in chains.items():
        assert len({dh for dh, _ in positions}) == 1, name
        assert [n for _, n in positions] == [0, 1, 2, 3], name  # exact positions written before dropping


@pytest.mark.parametrize("crash", [True, False])
def test_restart_with_a_small_cache_never_reuses_a_position(tmp_path: Path, crash: bool) -> None:
    w, hub, peers = _world(tmp_path)
    sent: dict[str, list[tuple[bytes, int]]] = {p.name: [] for p in peers}
    for r in range(3):
        for p in peers:
            m = hub.send(p, b"before %d" % r).message
            sent[p.name].append(_position(m, p))
            assert _ok(p.recv(hub, m)).payload == b"before %d" % r
    w.reopen(hub, crash=crash, cache_peers=1, cache_identities=1)
    for r in range(3):
        for p in peers:
            m = hub.send(p, b"after %d" % r).message
            sent[p.name].append(_position(m, p))
            assert _ok(p.recv(hub, m)).payload == b"after %d" % r
    for name, positions in sent.items():
        assert len(set(positions)) == len(positions), name
        ns = [n for _, n in positions]
        assert ns == sorted(ns), name
        if not crash:  # a clean close writes exact positions: no gap at all
            assert ns == list(range(len(ns))), name


def test_installations_are_reloaded_from_the_store(tmp_path: Path) -> None:
    _, hub, peers = _world(tmp_path)
    first = peers[0]
    for p in peers[1:]:  # push the first peer's installations out of the cache
        hub.send(p, b"x")
        hub.mgr.maintain()
    assert first.identity not in hub.mgr._cache._by_identity
    res = hub.send(first, b"still known")
    assert first.iid in res.installations and res.forward_secrecy
    assert _ok(first.recv(hub, res.message)).payload == b"still known"


def test_cache_bounds_must_be_positive(tmp_path: Path) -> None:
    w = World(tmp_path, Clock())
    with pytest.raises(ValueError):
        w.device("x", HUB, cache_peers=0)


def test_concurrent_requests_with_a_small_cache_never_reuse_a_position(tmp_path: Path) -> None:
    """Threads share fsyncs (group commit): the cache is dropped and refilled while other requests' writes are
    still waiting for durability."""
    _, hub, peers = _world(tmp_path)
    out: dict[str, list[bytes]] = {p.name: [] for p in peers}
    errors: list[BaseException] = []

    def sender(p: Device) -> None:
        try:
            for r in range(30):
                out[p.name].append(hub.send(p, b"%s %d" % (p.name.encode(), r)).message)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=sender, args=(p,)) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for p in peers:
        positions = [_position(m, p) for m in out[p.name]]
        assert len(set(positions)) == len(positions), p.name
        for r, m in enumerate(out[p.name]):
            assert _ok(p.recv(hub, m)).payload == b"%s %d" % (p.name.encode(), r)


def test_a_session_is_not_dropped_before_its_latest_write_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store reads committed rows only: dropping a session whose write is still queued would let the next
    request reload an older row (a ratchet step or a deleted message key undone)."""
    _, hub, peers = _world(tmp_path)
    for p in peers:
        hub.send(p, b"x")
    assert len(hub.mgr._cache._by_peer) < len(peers)  # normally the cache is trimmed
    monkeypatch.setattr(hub.mgr._store, "durable", lambda: 0)  # as if no commit had finished since
    for r in range(2):
        for p in peers:
            got = _ok(hub.recv(p, p.send(hub, b"reply %d" % r).message))  # a DH ratchet step: a new chain
            hub.mgr.confirm([got.confirm_ref])
    assert len(hub.mgr._cache._by_peer) == len(peers)  # nothing written since "durable" may be dropped
    monkeypatch.undo()
    for p in peers:
        hub.send(p, b"y")
    assert len(hub.mgr._cache._by_peer) <= 3
