"""Bundle acceptance and store caps with real agents (issue 15): a digit-shifted or high-S bundle is refused with
BAD_BUNDLE and changes nothing, a 1,000-installation bundle is refused from a client and from a message, and a
message that does not decrypt stores none of a stranger's bundles. Each test fails when its protection is removed.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from agent.client import AgentError
from agent.core import bundle as core_bundle
from agent.core import fallback, secp256k1
from agent.core.wire import NO_INSTALLATION, decode_protocol_message, dh_header, encode, encrypted_message, pb
from agent.core.wire import protocol_message
from backends.memory import MemoryKey
from tests.daemon.agentproc import AgentFactory, AgentProc


def _start(agent: AgentProc) -> None:
    agent.start()


def _pub(agent: AgentProc) -> bytes:
    with agent.client() as c:
        return c.identity().identity_public_key


def _iid(agent: AgentProc) -> str:
    with agent.client() as c:
        return c.identity().installation_id


def _send(a: AgentProc, b: AgentProc, text: bytes) -> tuple[bytes, tuple[bytes, int, bool]]:
    """a encrypts for b; returns the message and (ratchet key, n, carries an X3DH header) of b's entry."""
    with a.client() as c:
        m = c.encrypt(_pub(b), text).message
    entry = decode_protocol_message(m).encrypted_message[_iid(b)]
    return m, (bytes(entry.DR_header.key), int(entry.DR_header.n), entry.HasField("X3DH_header"))


def _recv(b: AgentProc, a: AgentProc, m: bytes) -> bytes:
    with b.client() as c:
        return c.decrypt(_pub(a), m).payload


# --- bundle acceptance --------------------------------------------------------------------------------------------


def _bundle_of(agent: AgentProc) -> pb.Bundle:
    with agent.client() as c:
        return pb.Bundle.FromString(c.bundle())


def _digit_shifted(b: pb.Bundle) -> pb.Bundle:
    """The same signature over the same material, with the timestamp's first digit moved into the last version."""
    out = pb.Bundle()
    out.CopyFrom(b)
    last = sorted(out.signed_pre_keys, key=lambda s: s.encode())[-1]
    ts = str(out.timestamp)
    out.signed_pre_keys[last].version = int(str(out.signed_pre_keys[last].version) + ts[0])
    out.timestamp = int(ts[1:])
    assert core_bundle.signature_material(out) == core_bundle.signature_material(b)
    assert core_bundle.verify_bundle(out) == bytes(b.identity)  # the signature alone cannot tell
    return out


def test_digit_shifted_bundle_is_refused_before_and_after_the_genuine_one(agents: AgentFactory) -> None:
    alice, bob, carol = agents.new(), agents.new(), agents.new()
    for a in (alice, bob, carol):
        _start(a)
    genuine = _bundle_of(bob)
    shifted = _digit_shifted(genuine)
    with alice.client() as c:
        c.add_bundle(genuine.SerializeToString())
        with pytest.raises(AgentError) as err:
            c.add_bundle(shifted.SerializeToString())
        assert err.value.code == "BAD_BUNDLE"
    with carol.client() as c:  # first sight: pinning a peer to a fake higher version is refused too
        with pytest.raises(AgentError) as err:
            c.add_bundle(shifted.SerializeToString())
        assert err.value.code == "BAD_BUNDLE"
        assert c.encrypt(_pub(bob), b"x").forward_secrecy is False  # state unchanged: bob is not known
        c.add_bundle(genuine.SerializeToString())
    m, _ = _send(carol, bob, b"genuine works")
    assert _recv(bob, carol, m) == b"genuine works"


def test_high_s_twin_of_a_valid_bundle_signature_is_refused(agents: AgentFactory) -> None:
    alice, bob = agents.new(), agents.new()
    _start(alice), _start(bob)
    genuine = _bundle_of(bob)
    sig = bytes(genuine.signature)
    s = int.from_bytes(sig[32:64], "big")
    twin = pb.Bundle()
    twin.CopyFrom(genuine)
    twin.signature = sig[:32] + (secp256k1.CURVE_ORDER - s).to_bytes(32, "big") + bytes([sig[64] ^ 1])
    assert secp256k1.recover(core_bundle.signature_digest(twin), bytes(twin.signature)) == bytes(genuine.identity)
    with alice.client() as c:
        with pytest.raises(AgentError) as err:
            c.add_bundle(twin.SerializeToString())
        assert err.value.code == "BAD_BUNDLE" and "high-S" in err.value.message
        assert c.encrypt(_pub(bob), b"x").forward_secrecy is False  # nothing stored


# --- caps on what a stranger can make us store ---------------------------------------------------------------------


def _rows(agent: AgentProc, table: str) -> int:
    db = sqlite3.connect(f"file:{agent.home / 'state.db'}?mode=ro", uri=True)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def _installation_rows(agent: AgentProc) -> int:
    return _rows(agent, "installations")


def _stranger_bundle(key: MemoryKey, n: int) -> pb.Bundle:
    spk = MemoryKey(b"\x42" * 32).public_key()
    entries = {f"{i:08x}-0000-4000-8000-000000000000": (spk, 1, 1) for i in range(n)}
    return core_bundle.sign_bundle(key, entries, time.time_ns())


def test_thousand_installation_bundle_is_refused_from_a_client_and_from_a_message(agents: AgentFactory) -> None:
    alice = agents.new()
    _start(alice)
    stranger = MemoryKey(b"\x33" * 32)
    big = _stranger_bundle(stranger, 1000)
    before = _installation_rows(alice)
    with alice.client() as c:
        with pytest.raises(AgentError) as err:
            c.add_bundle(big.SerializeToString())
        assert err.value.code == "BAD_BUNDLE"
        # the same bundle on a message that decrypts (DH fallback): the message is read, the bundle not stored
        alice_pub = c.identity().identity_public_key
        eph_pub, ct = fallback.encrypt(alice_pub, b"hi", b"\x21" * 32, b"\x00" * 12)
        msg = protocol_message("stranger", {NO_INSTALLATION: encrypted_message(ct, dh=dh_header(eph_pub))},
                               bundles=[big])
        assert c.decrypt(stranger.public_key(), encode(msg)).payload == b"hi"
    assert _installation_rows(alice) == before


def test_bundles_on_a_message_that_does_not_decrypt_are_not_stored(agents: AgentFactory) -> None:
    alice = agents.new()
    _start(alice)
    before = _installation_rows(alice)
    for n in range(5):
        stranger = MemoryKey(bytes([0x50 + n]) * 32)
        msg = protocol_message("stranger", {"not-alice": encrypted_message(b"\x00" * 64, dh=dh_header(
            MemoryKey(b"\x61" * 32).public_key()))}, bundles=[_stranger_bundle(stranger, 3)])
        with alice.client() as c, pytest.raises(AgentError) as err:
            c.decrypt(stranger.public_key(), encode(msg))
        assert err.value.code == "NO_SESSION"
    assert _installation_rows(alice) == before


def test_a_flood_of_fresh_sender_keys_gets_a_bounded_number_of_bundle_replies(agents: AgentFactory) -> None:
    """The sender key of a message is whatever key signed its envelope: a remote peer can use a new one for every
    message. Each such message that is not for us asks for a reply with our bundle, remembered per peer on disk;
    without a cap on the peers remembered, the store and the agent's memory grow with every fresh key."""
    import inspect

    from agent.daemon.sessions import SessionManager

    cap = inspect.signature(SessionManager).parameters["reply_peers"].default
    alice = agents.new()
    _start(alice)
    junk = encode(protocol_message("stranger", {}))  # no entry for alice: "not_for_this_device"
    replies = 0
    with alice.client() as c:
        for n in range(cap + 40):
            with pytest.raises(AgentError) as err:
                c.decrypt(MemoryKey((n + 1).to_bytes(32, "big")).public_key(), junk)
            assert err.value.code == "NO_SESSION" and err.value.reason == "not_for_this_device"
            replies += bool(err.value.reply)
        assert replies == cap  # the first `cap` strangers were answered, the rest not
        assert not c.status().locked  # still serving
    assert _rows(alice, "peer_replies") == cap
    alice.kill()  # SIGTERM: a clean stop
    alice.start()  # the cap holds across a restart: the remembered peers are loaded again
    with alice.client() as c, pytest.raises(AgentError) as err:
        c.decrypt(MemoryKey((cap + 100).to_bytes(32, "big")).public_key(), junk)
    assert err.value.reply == b""
    assert _rows(alice, "peer_replies") == cap


def test_a_flood_of_public_messages_from_fresh_keys_stores_a_bounded_number_of_bundles(agents: AgentFactory) -> None:
    """A public message stores its sender's bundle (as status-go does), and anyone can sign one with a new key
    each time; without the cap on identities learned that way, every such message adds installation rows, and
    without storing who came when, every restart would let another full cap of them in."""
    import inspect

    from agent.daemon.sessions import SessionManager

    cap = inspect.signature(SessionManager).parameters["stranger_identities"].default
    alice, bob = agents.new(), agents.new()
    _start(alice), _start(bob)
    with alice.client() as c:
        c.add_bundle(_bundle_of(bob).SerializeToString())  # a contact the client added: it stays
        base = _rows(alice, "installations")
        for n in range(cap + 60):
            key = MemoryKey((n + 1).to_bytes(32, "big"))
            assert c.decrypt(key.public_key(), _public_spam(key, n)).public
        assert c.encrypt(_pub(bob), b"still a contact").forward_secrecy is True
        newest = MemoryKey((cap + 60).to_bytes(32, "big")).public_key()
        assert c.encrypt(newest, b"the newest stranger's bundle is kept").forward_secrecy is True
        assert c.encrypt(MemoryKey((1).to_bytes(32, "big")).public_key(), b"the first one's is not") \
            .forward_secrecy is False
    assert _rows(alice, "installations") == base + cap
    alice.kill()  # SIGTERM: the cap holds across a restart (the strangers are stored, in the order they came)
    alice.start()
    with alice.client() as c:
        key = MemoryKey((cap + 100).to_bytes(32, "big"))
        assert c.decrypt(key.public_key(), _public_spam(key, cap + 100)).public
        # an encrypt to it reads its installation, so it answers only once the spam's batch is durable (rule 5)
        assert c.encrypt(key.public_key(), b"x").forward_secrecy is True
    assert _rows(alice, "installations") == base + cap


def _public_spam(key: MemoryKey, n: int) -> bytes:
    """A public message from ``key`` carrying a bundle it signed itself, one installation ``n``."""
    spk = MemoryKey(b"\x42" * 32).public_key()
    iid = f"{n:08x}-0000-4000-8000-000000000000"
    b = core_bundle.sign_bundle(key, {iid: (spk, 1, 1)}, time.time_ns())
    return encode(protocol_message(iid, bundles=[b], public_message=b"spam"))
