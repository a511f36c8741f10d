"""Multi-device scenarios (issue 4): each rule of the spec's "Session management" has a test that fails if it breaks.

Every device is a SessionManager with its own home and store; messages travel through the test, which
reorders and drops them as it likes.
"""

from __future__ import annotations

import random

import pytest

from agent.core.errors import IdentityMismatch
from agent.core.wire import decode_bundle, decode_protocol_message
from agent.daemon.sessions import DecryptResult, NoSession
from agent.daemon.store import DeleteSession
from backends.memory import MemoryKey
from tests.sessions.harness import DAY, HOUR, Device, World, entries, pair

ALICE = MemoryKey(b"\xa1" * 32)
BOB = MemoryKey(b"\xb0" * 32)
CAROL = MemoryKey(b"\xc0" * 32)


def ok(r: object) -> DecryptResult:
    assert isinstance(r, DecryptResult), r
    return r


def bundle_ids(dev: Device) -> list[str]:
    return sorted(decode_bundle(dev.mgr.our_bundle()).signed_pre_keys)


def introduce(*devs: Device) -> None:
    """Every device learns every other identity's bundle (as from a contact code)."""
    for d in devs:
        for other in devs:
            if other.identity != d.identity:
                d.mgr.add_peer_bundle(other.mgr.our_bundle())


def deliver(sender: Device, message: bytes, to: list[Device], rng: random.Random, drop: float = 0.0
            ) -> dict[str, DecryptResult | NoSession]:
    """Deliver one message to several devices in random order, dropping some."""
    order = list(to)
    rng.shuffle(order)
    out: dict[str, DecryptResult | NoSession] = {}
    for d in order:
        if rng.random() < drop:
            continue
        out[d.name] = d.recv(sender, message)
    return out


# --- pairing and approval -------------------------------------------------------------------------------------


def test_own_device_is_listed_but_unused_until_approved_and_approval_changes_the_bundle(world: World) -> None:
    a1, a2, b = world.device("a1", ALICE), world.device("a2", ALICE), world.device("b", BOB)
    introduce(a1, b)
    a2.mgr.add_peer_bundle(b.mgr.our_bundle())
    # a2 writes to Bob; a1 sees the message (same identity) but has no entry: not paired -> replies with its bundle
    m = a2.send(b, b"from a2").message
    r = a1.recv(a2, m)
    assert isinstance(r, NoSession) and r.reason == "not_paired" and r.reply is not None
    assert [(d.installation_id, d.enabled) for d in a1.mgr.devices()] == [(a1.iid, True), (a2.iid, False)]
    # listed, not used: neither in a1's bundle nor among a1's recipients
    assert bundle_ids(a1) == [a1.iid]
    assert a2.iid not in entries(a1.send(b, b"x").message)
    # a2 learns a1 from the reply (a DH message from our own identity), then both approve
    assert ok(a2.recv(a1, r.reply)).payload == b""
    assert [d.installation_id for d in a2.mgr.devices()] == [a2.iid, a1.iid]
    a1.mgr.approve_device(a2.iid)
    a2.mgr.approve_device(a1.iid)
    assert bundle_ids(a1) == sorted([a1.iid, a2.iid])
    m2 = a1.send(b, b"to bob and my other device")
    assert set(m2.installations) == {b.iid, a2.iid}
    assert ok(a2.recv(a1, m2.message)).payload == b"to bob and my other device"
    # Bob learns a2 from the bundle riding on a1's message and includes it from now on
    assert ok(b.recv(a1, m2.message)).payload == b"to bob and my other device"
    m3 = b.send(a1, b"hi both")
    assert set(m3.installations) == {a1.iid, a2.iid}
    assert ok(a2.recv(b, m3.message)).payload == b"hi both"
    # disabling stops both the copies and the advertisement
    a1.mgr.disable_device(a2.iid)
    assert bundle_ids(a1) == [a1.iid] and a2.iid not in a1.send(b, b"y").installations


def test_at_most_three_installations_self_included_newest_first(world: World) -> None:
    a = [world.device(f"a{i}", ALICE) for i in range(4)]
    b = world.device("b", BOB)
    for other in a[1:]:
        world.clock.advance(HOUR)  # a1 oldest bundle, a3 newest
        a[0].mgr.add_peer_bundle(other.mgr.our_bundle())
        a[0].mgr.approve_device(other.iid)
    assert bundle_ids(a[0]) == sorted([a[0].iid, a[2].iid, a[3].iid])  # self + the 2 most recent
    introduce(a[0], b)
    assert set(a[0].send(b, b"x").installations) == {b.iid, a[2].iid, a[3].iid}


def test_peer_gets_at_most_three_installations_newest_bundle_first(world: World) -> None:
    a = world.device("a", ALICE)
    bs = [world.device(f"b{i}", BOB) for i in range(4)]
    for d in bs:
        world.clock.advance(HOUR)
        a.mgr.add_peer_bundle(d.mgr.our_bundle())
    r = a.send(bs[0], b"x")
    assert sorted(r.installations) == sorted(d.iid for d in bs[1:])  # the oldest bundle (b0) is left out


# --- everyone talking, with reordering and loss ---------------------------------------------------------------


def test_alice_two_devices_bob_three_one_disabled_every_direction_reordered_and_lossy(world: World) -> None:
    rng = random.Random(7)
    a1, a2 = world.device("a1", ALICE), world.device("a2", ALICE)
    b1, b2, b3 = world.device("b1", BOB), world.device("b2", BOB), world.device("b3", BOB)
    pair(a1, a2)
    pair(b1, b2)
    b1.mgr.add_peer_bundle(b3.mgr.our_bundle())  # b3 is known to b1 and b2 but stays disabled
    b2.mgr.add_peer_bundle(b3.mgr.our_bundle())
    introduce(a1, b1)
    introduce(a2, b2)
    everyone = [a1, a2, b1, b2, b3]
    delivered: dict[str, int] = {d.name: 0 for d in everyone}
    pending: list[tuple[Device, bytes, bytes]] = []
    for rnd in range(6):
        for sender in (a1, a2, b1, b2):
            peer = BOB if sender.identity == ALICE.public_key() else ALICE
            text = f"{sender.name}#{rnd}".encode()
            res = sender.send(peer.public_key(), text)
            assert res.forward_secrecy
            assert b3.iid not in res.installations  # the disabled device never gets a copy from its siblings
            pending.append((sender, res.message, text))
        rng.shuffle(pending)
        keep = []
        for sender, msg, text in pending:
            if rng.random() < 0.3:
                keep.append((sender, msg, text))  # delayed to a later round
                continue
            for name, r in deliver(sender, msg, [d for d in everyone if d is not sender], rng, drop=0.15).items():
                if name == "b3":
                    assert isinstance(r, NoSession) and r.reason in ("not_paired", "not_for_this_device")
                    continue
                got = ok(r)
                assert got.payload == text and got.installation_id == sender.iid
                delivered[name] += 1
        pending = keep
    for sender, msg, text in pending:  # flush the late ones: old sessions still decrypt them
        for d in everyone:
            if d is not sender and d is not b3:
                assert ok(d.recv(sender, msg)).payload == text
                delivered[d.name] += 1
    assert all(delivered[n] > 10 for n in ("a1", "a2", "b1", "b2"))
    # every device of both identities ended up with sessions to the others it talks to
    assert {s.installation_id for s in a1.mgr.list_sessions()} >= {a2.iid, b1.iid, b2.iid}


# --- rotation and re-keying -----------------------------------------------------------------------------------


def test_rotation_rekeying_late_messages_grace_and_destruction(world: World) -> None:
    a = world.device("a", ALICE, spk_grace_ns=3 * DAY)
    b = world.device("b", BOB)
    introduce(a, b)
    ok(a.recv(b, b.send(a, b"hello").message))
    ok(b.recv(a, a.send(b, b"hi").message))
    late = b.send(a, b"sent before rotation, delivered late").message
    stale_bundle = a.mgr.our_bundle()
    old_spk = decode_bundle(stale_bundle).signed_pre_keys[a.iid].signed_pre_key
    world.clock.advance(DAY)  # 24 h from creation: the next request rotates
    new_bundle = a.mgr.our_bundle()
    new = decode_bundle(new_bundle).signed_pre_keys[a.iid]
    assert new.version == 2 and new.signed_pre_key != old_spk
    assert [s.expired for s in a.mgr.list_sessions() if not s.initiator] == [True]  # responder session on v1
    # Bob sees the higher version: his session on the old prekey expires, the next send starts a new X3DH
    b.mgr.add_peer_bundle(new_bundle)
    m2 = b.send(a, b"rekeyed")
    e = entries(m2.message)[a.iid]
    assert e.HasField("X3DH_header") and e.X3DH_header.id == new.signed_pre_key
    assert ok(a.recv(b, m2.message)).payload == b"rekeyed"
    assert ok(a.recv(b, late)).payload == b"sent before rotation, delivered late"  # old session still decrypts
    # a peer holding the stale bundle still reaches us through the expired prekey during the grace period
    c = world.device("c", CAROL)
    c.mgr.add_peer_bundle(stale_bundle)
    assert ok(a.recv(c, c.send(a, b"via old prekey").message)).payload == b"via old prekey"
    # after the grace period the old prekey is destroyed in the backend and no longer answers
    world.clock.advance(3 * DAY)
    a.mgr.maintain()
    assert 1 in a.backend.destroyed and 1 not in a.backend.spks
    d = world.device("d", MemoryKey(b"\xd0" * 32))
    d.mgr.add_peer_bundle(stale_bundle)
    r = a.recv(d, d.send(a, b"too late").message)
    assert isinstance(r, NoSession) and r.reason == "unknown_prekey" and r.reply is not None


def test_rotation_survives_restart_and_is_not_repeated(world: World) -> None:
    a = world.device("a", ALICE)
    world.clock.advance(DAY)
    assert a.mgr.rotate_signed_prekey() == 3  # the 24 h rotation (v2) happened first, then the explicit one
    world.reopen(a, crash=True)
    assert decode_bundle(a.mgr.our_bundle()).signed_pre_keys[a.iid].version == 3
    assert sorted(a.backend.spks) == [1, 2, 3]


# --- concurrent sessions ---------------------------------------------------------------------------------------


def test_both_sides_start_x3dh_at_once_and_converge_on_the_smaller_shared_key(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    introduce(a, b)
    ma = a.send(b, b"alice first").message
    mb = b.send(a, b"bob first").message  # crossing: neither has heard from the other
    assert ok(b.recv(a, ma)).payload == b"alice first"
    assert ok(a.recv(b, mb)).payload == b"bob first"
    # two live sessions on each side; both must now pick the same one (smaller SK), the other expires
    ea = entries(a.send(b, b"second from alice").message)[b.iid]
    eb = entries(b.send(a, b"second from bob").message)[a.iid]
    assert ea.DR_header.id == eb.DR_header.id
    sk = {s.sid: s.sk for s in a.mgr._store.load_sessions()}
    live = [s for s in a.mgr._store.load_sessions() if not s.expired]
    assert len(live) == 1 and live[0].sk == min(sk.values())
    assert [s.expired for s in b.mgr._store.load_sessions()].count(False) == 1
    # and both directions keep working, also for the late messages of the losing session
    ok(b.recv(a, a.send(b, b"third").message))
    ok(a.recv(b, b.send(a, b"third").message))


def test_a_peer_that_starts_over_supersedes_the_old_session(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    introduce(a, b)
    ok(b.recv(a, a.send(b, b"1").message))
    ok(a.recv(b, b.send(a, b"2").message))  # confirmed session
    # Bob loses his state but keeps his installation (old backup): he starts a new X3DH with Alice
    world.reopen(b, crash=True)
    for s in b.mgr._cache.peer_sessions(ALICE.public_key(), a.iid):  # loaded on demand: load them to change them
        s.rec.expired = True
    m = b.send(a, b"fresh start").message
    assert entries(m)[a.iid].HasField("X3DH_header")
    assert ok(a.recv(b, m)).payload == b"fresh start"
    reply = entries(a.send(b, b"on the new session").message)[b.iid]
    assert reply.DR_header.id == entries(m)[a.iid].DR_header.id
    assert ok(b.recv(a, a.send(b, b"ok").message)).payload == b"ok"


# --- account recovery and partitioned devices -----------------------------------------------------------------


def test_account_restored_on_a_fresh_home_gets_included_after_the_bundle_reply(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    introduce(a, b)
    ok(b.recv(a, a.send(b, b"before").message))
    restored = world.device("a-restored", ALICE)  # same identity key, empty state, new installation id
    m = b.send(a, b"are you there?").message
    r = restored.recv(b, m)
    assert isinstance(r, NoSession) and r.reason == "not_for_this_device" and r.reply is not None
    assert ok(b.recv(restored, r.reply)).payload == b""  # Bob learns the new installation from the reply
    m2 = b.send(a, b"now to both")
    assert restored.iid in m2.installations
    assert ok(restored.recv(b, m2.message)).payload == b"now to both"
    assert ok(a.recv(b, m2.message)).payload == b"now to both"


def test_never_paired_device_replies_rate_limited_and_is_not_used(world: World) -> None:
    a1, b = world.device("a1", ALICE, reply_interval_ns=HOUR), world.device("b", BOB)
    stray = world.device("stray", ALICE, reply_interval_ns=HOUR)
    introduce(a1, b)
    first = stray.recv(a1, a1.send(b, b"1").message)
    assert isinstance(first, NoSession) and first.reason == "not_paired" and first.reply is not None
    again = stray.recv(a1, a1.send(b, b"2").message)
    assert isinstance(again, NoSession) and again.reply is None  # rate-limited per peer
    world.clock.advance(HOUR)
    later = stray.recv(a1, a1.send(b, b"3").message)
    assert isinstance(later, NoSession) and later.reply is not None
    ok(a1.recv(stray, first.reply))
    assert stray.iid not in a1.send(b, b"4").installations  # listed, but never used without approval
    assert [d.enabled for d in a1.mgr.devices() if d.installation_id == stray.iid] == [False]


def test_unknown_session_after_state_loss_is_typed_and_answered(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    introduce(a, b)
    ok(b.recv(a, a.send(b, b"1").message))
    ok(a.recv(b, b.send(a, b"2").message))
    m = a.send(b, b"no x3dh header any more").message
    # as if Bob's session rows were lost: gone from the disk and from the manager's cache over it
    b.mgr._store.write([DeleteSession(s.sid) for s in b.mgr._store.load_sessions()])
    b.mgr._cache.sessions.clear()
    b.mgr._cache._by_peer.clear()
    r = b.recv(a, m)
    assert isinstance(r, NoSession) and r.reason == "unknown_session" and r.reply is not None


def test_bundle_in_a_message_must_be_the_senders(world: World) -> None:
    a, b, c = world.device("a", ALICE), world.device("b", BOB), world.device("c", CAROL)
    introduce(a, b)
    m = a.send(b, b"x").message
    r = c.recv(a, m)  # not for Carol, but the bundle is valid and Alice's: Carol learns Alice's device
    assert isinstance(r, NoSession)
    before = c.mgr.list_sessions(), c.mgr._cache.installations.copy()
    with pytest.raises(IdentityMismatch):  # claimed sender Bob, bundle by Alice: rejected as a whole
        c.mgr.decrypt(BOB.public_key(), m)
    assert (c.mgr.list_sessions(), c.mgr._cache.installations) == before


def test_expired_sessions_are_forgotten_after_the_retention_period(world: World) -> None:
    a = world.device("a", ALICE, session_retention_ns=30 * DAY)
    b = world.device("b", BOB)
    introduce(a, b)
    ok(a.recv(b, b.send(a, b"1").message))  # b initiates, a responds
    ok(b.recv(a, a.send(b, b"2").message))
    world.clock.advance(DAY)
    b.mgr.add_peer_bundle(a.mgr.our_bundle())  # a rotated: b re-keys with a new X3DH
    ok(a.recv(b, b.send(a, b"new session").message))
    assert sorted(s.expired for s in a.mgr.list_sessions()) == [False, True]  # the old one only decrypts now
    world.clock.advance(28 * DAY)
    a.mgr.maintain()
    assert len(a.mgr.list_sessions()) == 2  # not yet: 29 days since the old session's last use
    world.clock.advance(2 * DAY)
    ok(a.recv(b, b.send(a, b"keeps the live one busy").message))
    a.mgr.maintain()
    left = a.mgr.list_sessions()
    assert [s.expired for s in left] == [False]
    assert len(a.mgr._store.load_sessions()) == 1  # gone from the disk too
    world.reopen(a, crash=True, session_retention_ns=30 * DAY)
    assert len(a.mgr.list_sessions()) == 1
    ok(b.recv(a, a.send(b, b"still talking").message))


def test_interoperates_with_a_peer_that_keeps_both_concurrent_sessions(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status-go never expires the other session and sends on the first one it created; we still talk."""
    import agent.daemon.sessions as sessions_mod
    from agent.daemon.store import SessionRecord

    def status_go_choice(cands: list[SessionRecord]) -> tuple[SessionRecord | None, list[SessionRecord]]:
        # nothing expires, and (worst case for us) it picks the session our rule does not
        live = sorted((s for s in cands if not s.expired), key=lambda s: s.sk, reverse=True)
        return (live[0] if live else None), []

    a, b = world.device("a", ALICE), world.device("b", BOB)
    introduce(a, b)
    ma, mb = a.send(b, b"a1").message, b.send(a, b"b1").message
    ok(b.recv(a, ma))
    ok(a.recv(b, mb))
    for i in range(4):
        with monkeypatch.context() as m:
            m.setattr(sessions_mod, "choose_session", status_go_choice)
            from_b = b.send(a, b"from the status-go-like peer %d" % i).message
        assert ok(a.recv(b, from_b)).payload == b"from the status-go-like peer %d" % i
        from_a = a.send(b, b"from us %d" % i).message
        assert entries(from_a)[b.iid].DR_header.id != entries(from_b)[a.iid].DR_header.id  # two sessions in use
        assert ok(b.recv(a, from_a)).payload == b"from us %d" % i
