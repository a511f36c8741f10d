"""SessionManager API: one device per identity; durability, reservation, confirmation, bad input."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from agent.core.errors import DecryptFailed, IdentityMismatch, MalformedKey, MalformedMessage, MessageKeyGone
from agent.core import fallback
from agent.core.wire import (NO_INSTALLATION, decode_bundle, decode_protocol_message, dh_header, encode,
                             encrypted_message, protocol_message)
from agent.core.keyops import KeyOps
from agent.daemon.own_devices import DeviceError
from agent.daemon.sessions import DecryptResult, NoSession, SessionManager
from agent.daemon.store import Store
from backends.memory import MemoryKey
from tests.sessions.harness import World, entries, public_from, world  # noqa: F401  (fixture)

ALICE = MemoryKey(b"\x0a" * 32)
BOB = MemoryKey(b"\x0b" * 32)
CAROL = MemoryKey(b"\x0c" * 32)


def ok(r: object) -> DecryptResult:
    assert isinstance(r, DecryptResult), r
    return r


def test_installation_id_is_stable_per_home(world: World) -> None:
    a = world.device("a", ALICE)
    iid = a.iid
    assert iid == iid.lower() and len(iid) == 36
    world.reopen(a, crash=False)
    assert a.iid == iid
    assert world.device("a2", ALICE).iid != iid


def test_our_bundle_verifies_and_names_this_installation(world: World) -> None:
    a = world.device("a", ALICE)
    b = decode_bundle(a.mgr.our_bundle())
    assert bytes(b.identity) == ALICE.public_key()
    assert list(b.signed_pre_keys) == [a.iid]
    assert b.signed_pre_keys[a.iid].version == 1 and b.signed_pre_keys[a.iid].protocol_version == 1
    assert bytes(b.signed_pre_keys[a.iid].signed_pre_key) == a.backend.spks[1].public_key()


def test_x3dh_header_is_resent_until_the_first_reply(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m1 = a.send(b, b"one", b.mgr.our_bundle())
    m2 = a.send(b, b"two")
    assert m1.forward_secrecy and m1.installations == [b.iid]
    for m in (m1, m2):
        assert entries(m.message)[b.iid].HasField("X3DH_header")
    assert ok(b.recv(a, m2.message)).payload == b"two"  # out of order
    assert ok(b.recv(a, m1.message)).payload == b"one"
    assert ok(a.recv(b, b.send(a, b"reply").message)).payload == b"reply"
    m3 = a.send(b, b"three")
    assert not entries(m3.message)[b.iid].HasField("X3DH_header")
    assert ok(b.recv(a, m3.message)).payload == b"three"


def test_every_message_carries_our_bundle(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m = decode_protocol_message(a.send(b, b"x", b.mgr.our_bundle()).message)
    assert m.installation_id == a.iid
    assert [bytes(x.identity) for x in m.bundles] == [ALICE.public_key()]


def test_no_bundle_means_dh_fallback_then_bundle_reply_then_x3dh(world: World) -> None:
    a, c = world.device("a", ALICE), world.device("c", CAROL)
    r = a.send(c, b"hello carol")
    assert r.forward_secrecy is False and r.installations == []
    assert list(entries(r.message)) == [NO_INSTALLATION]
    got = ok(c.recv(a, r.message))
    assert got.payload == b"hello carol" and got.forward_secrecy is False and got.reply is not None
    back = ok(a.recv(c, got.reply))  # an empty advertisement: Alice learns Carol's bundle, no reply loop
    assert back.payload == b"" and back.reply is None
    r2 = a.send(c, b"now with x3dh")
    assert r2.forward_secrecy is True and r2.installations == [c.iid]
    assert ok(c.recv(a, r2.message)).payload == b"now with x3dh"


def _reply_times(world: World, dev_name: str, key: MemoryKey) -> dict[bytes, int]:
    store = Store(world.tmp / dev_name / "state.db", key)
    try:
        return store.load_peer_replies()
    finally:
        store.close()


def test_bundle_replies_are_capped_per_interval_and_forgotten_after_it(world: World) -> None:
    """One reply per peer per interval, and at most ``reply_peers`` peers per interval: a stranger's fresh keys
    (one per message) get no reply past the cap and write nothing; reply times older than the interval are deleted,
    from memory and from the store, and then the cap has room again. Also for a DH-fallback message that reads."""
    hour = 3600 * 10**9
    kw = dict(reply_peers=3, reply_interval_ns=hour)
    c = world.device("c", CAROL, **kw)
    strangers = [MemoryKey(bytes([0x70 + i]) * 32) for i in range(5)]
    junk = encode(protocol_message("stranger", {}))
    got = [c.recv(s.public_key(), junk) for s in strangers[:4]]
    assert all(isinstance(g, NoSession) for g in got)
    assert [g.reply is not None for g in got] == [True, True, True, False]  # type: ignore[union-attr]
    again = c.recv(strangers[0].public_key(), junk)  # the per-peer limit still applies within the interval
    assert isinstance(again, NoSession) and again.reply is None
    # a DH-fallback message from a new sender reads, but past the cap it brings no reply either
    eph_pub, ct = fallback.encrypt(CAROL.public_key(), b"hi", b"\x21" * 32, b"\x00" * 12)
    dh_msg = encode(protocol_message("s4", {NO_INSTALLATION: encrypted_message(ct, dh=dh_header(eph_pub))}))
    read = ok(c.recv(strangers[4].public_key(), dh_msg))
    assert read.payload == b"hi" and read.reply is None
    world.reopen(c, crash=False, **kw)  # the remembered peers survive a restart, and so does the cap
    assert set(_reply_times(world, "c", CAROL)) == {s.public_key() for s in strangers[:3]}
    assert c.recv(strangers[3].public_key(), junk).reply is None  # type: ignore[union-attr]
    world.clock.advance(hour)
    assert ok(c.recv(strangers[4].public_key(), dh_msg)).reply is not None  # the old times aged out
    c.mgr.close()
    assert set(_reply_times(world, "c", CAROL)) == {strangers[4].public_key()}  # and left the disk


def test_strangers_learned_from_messages_are_capped_and_contacts_kept(world: World) -> None:
    """A public or DH-fallback message stores its sender's bundle; anyone can send one from a fresh key. Past
    ``stranger_identities`` identities first learned that way, the oldest is forgotten again (its installations
    leave memory and the store), unless we have a session with it by then; an identity a client added is never
    forgotten; the order survives a restart."""
    c, b = world.device("c", CAROL, stranger_identities=2), world.device("b", BOB)
    c.mgr.add_peer_bundle(b.mgr.our_bundle())  # a contact the client added
    assert ok(c.recv(b, b.mgr.public_message(b"bob in public"))).public
    keys = [MemoryKey(bytes([0x80 + i]) * 32) for i in range(4)]
    for k in keys[:2]:
        assert ok(c.recv(k.public_key(), public_from(world, k, b"hi"))).payload == b"hi"
    assert c.send(keys[0].public_key(), b"x").forward_secrecy is True  # a session with the first: a contact now
    for k in keys[2:]:
        ok(c.recv(k.public_key(), public_from(world, k, b"hi")))
    # remembered: keys 0..3 in turn, 2 at most: key 0 left the memo but has a session; key 1 was forgotten
    assert c.send(keys[1].public_key(), b"x").forward_secrecy is False  # no bundle any more: DH fallback
    assert c.send(keys[3].public_key(), b"x").forward_secrecy is True
    assert c.send(keys[0].public_key(), b"x").forward_secrecy is True
    assert c.send(b, b"x").forward_secrecy is True  # the client's contact, although bob sent a public message
    world.reopen(c, crash=False, stranger_identities=2)  # the store agrees, and remembers who came in which order
    assert c.send(keys[1].public_key(), b"y").forward_secrecy is False
    late = MemoryKey(b"\x90" * 32)
    ok(c.recv(late.public_key(), public_from(world, late, b"after the restart")))
    assert c.send(keys[2].public_key(), b"y").forward_secrecy is False  # the oldest stranger before the restart
    assert c.send(late.public_key(), b"y").forward_secrecy is True


def test_refused_bundles_on_messages_are_logged_a_burst_at_a_time(world: World,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A remote peer decides how many messages with a refused bundle arrive: the log gets a burst of lines per
    window and a count of the rest, not a line per message (agent.log would rotate away everything else)."""
    import logging

    from agent.core.bundle import sign_bundle
    from agent.daemon import sessions

    c = world.device("c", CAROL)
    stranger = MemoryKey(b"\x93" * 32)
    spk = MemoryKey(b"\x94" * 32).public_key()
    big = sign_bundle(stranger, {f"i{n}": (spk, 1, 1) for n in range(4)}, world.clock.now)  # over the 3-entry cap
    msg = encode(protocol_message("i0", bundles=[big], public_message=b"read, bundle refused"))
    with caplog.at_level(logging.INFO, logger=sessions.__name__):
        for _ in range(3 * sessions._REFUSED_LOG_BURST):
            assert ok(c.recv(stranger.public_key(), msg)).payload == b"read, bundle refused"
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == sessions._REFUSED_LOG_BURST and "installations" in lines[0]
    c.mgr._refused_log.window = 0.0  # the next window: the next line says how many were held back
    with caplog.at_level(logging.INFO, logger=sessions.__name__):
        c.recv(stranger.public_key(), msg)
    assert f"({2 * sessions._REFUSED_LOG_BURST} more refused bundles not logged)" in caplog.records[-1].getMessage()


def test_duplicate_decrypts_until_confirmed(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m = a.send(b, b"dup", b.mgr.our_bundle()).message
    first = ok(b.recv(a, m))
    assert ok(b.recv(a, m)).payload == b"dup"
    b.mgr.confirm([first.confirm_ref])
    with pytest.raises(MessageKeyGone):
        b.mgr.decrypt(ALICE.public_key(), m)
    b.mgr.confirm([first.confirm_ref])  # confirming twice is harmless
    with pytest.raises(MalformedMessage):
        b.mgr.confirm([first.confirm_ref[:-1]])


def test_tampered_ciphertext_changes_nothing(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m = decode_protocol_message(a.send(b, b"secret", b.mgr.our_bundle()).message)
    entry = m.encrypted_message[b.iid]
    good = encode(m)
    entry.payload = bytes(entry.payload[:-1]) + bytes([entry.payload[-1] ^ 1])
    with pytest.raises(DecryptFailed):
        b.mgr.decrypt(ALICE.public_key(), encode(m))
    assert b.mgr.list_sessions() == []  # the responder session of a failed decrypt is not kept
    assert ok(b.recv(a, good)).payload == b"secret"


def test_bad_input_is_typed_and_changes_nothing(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m = a.send(b, b"x", b.mgr.our_bundle()).message
    with pytest.raises(MalformedMessage):
        b.mgr.decrypt(ALICE.public_key(), m[:-3])
    with pytest.raises(MalformedKey):
        b.mgr.decrypt(b"\x02" * 5, m)
    with pytest.raises(IdentityMismatch):  # the carried bundle is Alice's, the claimed sender is Carol
        b.mgr.decrypt(CAROL.public_key(), m)
    with pytest.raises(IdentityMismatch):
        a.mgr.encrypt(CAROL.public_key(), b"x", b.mgr.our_bundle())
    with pytest.raises(MalformedMessage):
        a.mgr.add_peer_bundle(b"\xff\xff")
    with pytest.raises(MalformedMessage):
        a.mgr.encrypt(BOB.public_key(), "text")  # type: ignore[arg-type]
    assert b.mgr.list_sessions() == [] and [d.is_self for d in b.mgr.devices()] == [True]
    assert ok(b.recv(a, m)).payload == b"x"


def test_public_messages_pass_through_marked(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    got = ok(b.recv(a, a.mgr.public_message(b"hello everyone")))
    assert got.public is True and got.forward_secrecy is False and got.payload == b"hello everyone"
    assert got.confirm_ref == b""


def test_own_echo_and_device_errors(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m = a.send(b, b"x", b.mgr.our_bundle()).message
    r = a.recv(a, m)
    assert isinstance(r, NoSession) and r.reason == "own_message" and r.reply is None
    with pytest.raises(DeviceError):
        a.mgr.approve_device("no-such-device")
    with pytest.raises(DeviceError):
        a.mgr.disable_device(a.iid)


def test_crash_jumps_past_reserved_positions_and_peer_absorbs_the_gap(world: World) -> None:
    a, b = world.device("a", ALICE, send_reserve=16), world.device("b", BOB)
    ms = [a.send(b, b"m%d" % i, b.mgr.our_bundle() if i == 0 else None).message for i in range(5)]
    world.reopen(a, crash=True, send_reserve=16)  # killed: memory lost, only the store survives
    after = a.send(b, b"after crash").message
    # the last write (new session, after position 0) reserved up to 1 + 16: the restart jumps there
    assert entries(after)[b.iid].DR_header.n == 17
    for i, m in enumerate(ms):
        assert ok(b.recv(a, m)).payload == b"m%d" % i
    assert ok(b.recv(a, after)).payload == b"after crash"


def test_clean_restart_leaves_no_gap(world: World) -> None:
    a, b = world.device("a", ALICE, send_reserve=16), world.device("b", BOB)
    for i in range(3):
        a.send(b, b"m", b.mgr.our_bundle() if i == 0 else None)
    world.reopen(a, crash=False, send_reserve=16)
    assert entries(a.send(b, b"next").message)[b.iid].DR_header.n == 3


def test_positions_crossing_the_mark_are_written_before_return(world: World) -> None:
    a, b = world.device("a", ALICE, send_reserve=4), world.device("b", BOB)
    commits = []
    for i in range(10):
        a.send(b, b"m", b.mgr.our_bundle() if i == 0 else None)
        commits.append(a.mgr._store.durable())
    # writes only for message 0 (new session; mark 1+4) and message 5 (reached the mark; new mark 6+4)
    assert [c - commits[0] for c in commits] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    (rec,) = Store(a.home / "state.db", ALICE).load_sessions()
    assert rec.send_hwm == 10


def test_decrypt_state_is_durable_before_return(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m = a.send(b, b"x", b.mgr.our_bundle()).message
    ok(b.recv(a, m))
    world.reopen(b, crash=True)
    assert len(b.mgr.list_sessions()) == 1
    assert ok(b.recv(a, m)).payload == b"x"  # kept key survived the crash: a redelivery still decrypts
    assert ok(a.recv(b, b.send(a, b"reply").message)).payload == b"reply"


class _GatedKey:
    """An identity key whose DH can be held at a gate, like a slow smart card."""

    def __init__(self, inner: KeyOps, twin: "_GatedKey | None" = None) -> None:
        self.inner = inner
        self.armed = False
        self.entered: threading.Event = twin.entered if twin else threading.Event()
        self.gate: threading.Event = twin.gate if twin else threading.Event()
        self.lock_held: list[bool] = twin.lock_held if twin else []  # per DH: was the state lock held?
        self.owner: SessionManager | None = None

    def public_key(self) -> bytes:
        return self.inner.public_key()

    def sign(self, digest: bytes) -> bytes:
        return self.inner.sign(digest)

    def dh(self, peer: bytes) -> bytes:
        if self.armed:
            assert self.owner is not None
            self.lock_held.append(self.owner._lock._is_owned())  # type: ignore[attr-defined]
            self.entered.set()
            self.gate.wait(30)
        return self.inner.dh(peer)


@pytest.mark.parametrize("slow", ["dh_fallback_decrypt", "incoming_x3dh", "outgoing_x3dh"])
def test_token_work_does_not_block_other_requests(world: World, slow: str) -> None:
    gated = _GatedKey(BOB)
    b = world.device("b", BOB)
    b.backend._ik = gated  # type: ignore[assignment]
    b.mgr._ik = gated
    spk = _GatedKey(b.backend.spks[1], twin=gated)  # the SPK is gated and watched too
    b.backend.spks[1] = spk  # type: ignore[assignment]
    gated.owner = spk.owner = b.mgr
    a, c = world.device("a", ALICE), world.device("c", CAROL)
    a.mgr.add_peer_bundle(b.mgr.our_bundle())
    ok(b.recv(a, a.send(b, b"hi").message))  # a session that needs no token to use
    op: Callable[[], object]
    if slow == "dh_fallback_decrypt":
        msg = c.send(b, b"slow one").message  # no bundle: DH with Bob's IK to decrypt
        op = lambda: b.recv(c, msg)  # noqa: E731
    elif slow == "incoming_x3dh":
        msg = c.send(b, b"slow one", b.mgr.our_bundle()).message  # passive X3DH: DH with Bob's IK
        op = lambda: b.recv(c, msg)  # noqa: E731
    else:
        bundle = c.mgr.our_bundle()  # active X3DH: DH with Bob's IK
        op = lambda: b.send(c, b"slow one", bundle)  # noqa: E731
    gated.armed = spk.armed = True
    results: dict[str, object] = {}
    slow_t = threading.Thread(target=lambda: results.update(slow=op()))
    slow_t.start()
    assert gated.entered.wait(30)  # the slow request is now inside the (slow) token
    fast = threading.Thread(target=lambda: results.update(enc=b.send(a, b"meanwhile")))
    fast.start()
    fast.join(30)
    finished_while_token_busy = not fast.is_alive()
    gated.gate.set()
    slow_t.join()
    fast.join()
    assert finished_while_token_busy
    assert gated.lock_held and not any(gated.lock_held)  # no token DH of the slow request ran under the lock
    assert ok(a.recv(b, results["enc"].message)).payload == b"meanwhile"  # type: ignore[attr-defined]
    if slow == "outgoing_x3dh":
        assert ok(c.recv(b, results["slow"].message)).payload == b"slow one"  # type: ignore[attr-defined]
    else:
        assert ok(results["slow"]).payload == b"slow one"
