"""Double Ratchet: status-go known answers, limits, retention, serialisation and the token-held SPK path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.core import ratchet as rt
from agent.core.errors import DecryptFailed, InvalidState, MalformedKey, MessageKeyGone, TooManySkipped
from agent.core.keys import public_from_secret
from agent.core.ratchet import SPEC, STATUS_GO, Header, Ratchet, profile_by_name
from backends.memory import MemoryKey

SK = bytes.fromhex("a4e923d0af8fe78a056363be20e71c0a58e569ea8fc1f79289eca10d9f68133a")
BOB_SPK = MemoryKey(b"3" * 32)


def scripted(*chars: str) -> rt.KeyGen:
    it: Iterator[str] = iter(chars)

    def gen() -> tuple[bytes, bytes]:
        secret = next(it).encode() * 32
        return secret, public_from_secret(secret)

    return gen


def status_pair() -> tuple[Ratchet, Ratchet]:
    alice = Ratchet.initiator(STATUS_GO, SK, BOB_SPK.public_key(), keygen=scripted("4", "6", "8"))
    bob = Ratchet.responder(STATUS_GO, SK, BOB_SPK.public_key(), None, keygen=scripted("5", "7"))
    return alice, bob


def test_status_go_known_answer_conversation() -> None:
    """A1, A2, B1, A3, B2 from the real status-go code (reference/status-go-facts.md §8.2)."""
    alice, bob = status_pair()
    h1, a1 = alice.encrypt(b"alice message 0")
    assert h1 == Header(public_from_secret(b"4" * 32), 0, 0)
    assert h1.encode().hex() == "000000000000000002407cba6352eaeb9354dc75ca26396785b27a85cfd4d58575de440902292d662a"
    assert a1.hex() == ("3c14b0418efc07c686eb14fa0d608f63b047061b6ebbf0cf9619dff634cda2ec23fc562d3de2ef03426ef665a8ff"
                        "adfe9fbe1f1ba875b641dd2230937569bb")
    h2, a2 = alice.encrypt(b"alice message 1")
    assert a2.hex().startswith("f92d07557be8149d9871c3cea476b8de628466f87f7ff115663bff41f307d8b9")
    # Bob's SPK private key lives in the token: the first DH ratchet step goes through KeyOps
    with pytest.raises(InvalidState):
        bob.decrypt(h1, a1)
    assert bob.decrypt(h1, a1, spk=BOB_SPK) == b"alice message 0"
    assert bob.decrypt(h2, a2) == b"alice message 1"
    hb1, b1 = bob.encrypt(b"bob reply 0")
    assert hb1 == Header(public_from_secret(b"5" * 32), 0, 0)
    assert b1.hex() == ("f1d7f5c318fc081d1b1e150d38781b4c3041e59d0e3c7c81e81bc958658176d624cd354025d22a75b646179c9c6"
                        "9fa3d651d511422c764707f4ea3")
    assert alice.decrypt(hb1, b1) == b"bob reply 0"
    h3, a3 = alice.encrypt(b"alice message 2")
    assert h3 == Header(public_from_secret(b"6" * 32), 0, 2)
    assert a3.hex() == ("3f802ad0ef1141eb494b5a96f3b096241d7955c31a7a6f439f0192c88408cd7a880a6dd0ca6d2dcc261d7c75ce0f"
                        "23ec9a55769d81718ef9a165f841fa0ddd")
    assert bob.decrypt(h3, a3) == b"alice message 2"
    hb2, b2 = bob.encrypt(b"bob reply 1")
    assert hb2 == Header(public_from_secret(b"7" * 32), 0, 1)
    assert b2.hex() == ("18f290041e40ef54fddd3cd182cad7ce9974464b30bd5b9d93e3b10d0bf14ce2a3de7b36f4672510b333830597d8"
                        "fa5865cce2c234e6f722de645b")
    assert alice.decrypt(hb2, b2) == b"bob reply 1"


def test_initial_values_of_the_initiator() -> None:
    alice, _ = status_pair()
    st = alice.debug_state()
    assert st["root_key"] == "6b85bad948a9606aab8d6661a4b00f4842dc1801733e94c4c20e3578b117127f"
    assert st["send_ck"] == "24afc0323384ab0dba6736dc679f3b52f900d79f8cfc97b7a508c904781a45e4"
    assert st["recv_ck"] == SK.hex()
    assert st["dhr"] == BOB_SPK.public_key().hex()


def test_wrong_spk_keyops_is_refused_without_state_change() -> None:
    alice, bob = status_pair()
    h, c = alice.encrypt(b"x")
    before = bob.to_bytes()
    with pytest.raises(InvalidState):
        bob.decrypt(h, c, spk=MemoryKey(b"9" * 32))
    assert bob.to_bytes() == before


def test_duplicates_decrypt_until_deleted_then_fail() -> None:
    alice, bob = status_pair()
    h, c = alice.encrypt(b"hi")
    assert bob.decrypt(h, c, spk=BOB_SPK) == b"hi"
    assert bob.has_message_key(h.dh, h.n)
    assert bob.decrypt(h, c) == b"hi"  # waiting for confirmation: decrypts again
    bob.delete_message_key(h.dh, h.n)
    bob.delete_message_key(h.dh, h.n)  # idempotent
    before = bob.to_bytes()
    with pytest.raises(MessageKeyGone):
        bob.decrypt(h, c)
    assert bob.to_bytes() == before


def test_max_skip_exactly_allowed_one_more_refused() -> None:
    for profile in (STATUS_GO, SPEC):
        spk_pub, spk_priv = _kp(profile)
        near, b_ok = Ratchet.initiator(profile, SK, spk_pub), Ratchet.responder(profile, SK, spk_pub, spk_priv)
        near.advance_sending_chain(profile.max_skip)
        h, c = near.encrypt(b"far")
        assert h.n == profile.max_skip
        assert b_ok.decrypt(h, c) == b"far"
        assert b_ok.stored_key_count() == profile.max_skip + 1  # the skipped keys + the used key
        far, b_bad = Ratchet.initiator(profile, SK, spk_pub), Ratchet.responder(profile, SK, spk_pub, spk_priv)
        far.advance_sending_chain(profile.max_skip + 1)
        hh, cc = far.encrypt(b"too far")
        before = b_bad.to_bytes()
        with pytest.raises(TooManySkipped):
            b_bad.decrypt(hh, cc)
        assert b_bad.to_bytes() == before


def _kp(profile: rt.Profile) -> tuple[bytes, bytes]:
    priv, pub = profile.default_keygen()()
    return pub, priv


def test_retention_limits_prune_oldest() -> None:
    profile = STATUS_GO.with_limits(max_skip=1000, max_keep=5, max_keys_per_session=3)
    spk_pub, spk_priv = _kp(profile)
    a = Ratchet.initiator(profile, SK, spk_pub)
    b = Ratchet.responder(profile, SK, spk_pub, spk_priv)
    msgs = [a.encrypt(bytes([i])) for i in range(8)]
    for h, c in msgs:
        b.decrypt(h, c)
        assert b.stored_key_count() <= 3
    # newest 3 kept, older ones gone for good
    kept = [m for m in msgs if b.has_message_key(m[0].dh, m[0].n)]
    assert [m[0].n for m in kept] == [5, 6, 7]
    assert Ratchet.from_bytes(b.to_bytes()).debug_state() == b.debug_state()  # pruned keys gone from the bytes
    b.delete_message_key(msgs[6][0].dh, msgs[6][0].n)
    assert Ratchet.from_bytes(b.to_bytes()).debug_state() == b.debug_state()
    with pytest.raises(MessageKeyGone):
        b.decrypt(*msgs[0])


def test_max_keep_drops_by_sequence() -> None:
    profile = SPEC.with_limits(max_skip=1000, max_keep=3, max_keys_per_session=2000)
    spk_pub, spk_priv = _kp(profile)
    a = Ratchet.initiator(profile, SK, spk_pub)
    b = Ratchet.responder(profile, SK, spk_pub, spk_priv)
    msgs = [a.encrypt(bytes([i])) for i in range(6)]
    b.decrypt(*msgs[5])  # skips 0..4 (seq 0..4), uses 5 (seq 5): keys_count 6, drop seq <= 3
    assert [m[0].n for m in msgs if b.has_message_key(m[0].dh, m[0].n)] == [4, 5]
    assert Ratchet.from_bytes(b.to_bytes()).debug_state() == b.debug_state()


def test_advance_and_sending_position() -> None:
    alice, bob = status_pair()
    pub, n = alice.sending_position()
    assert pub == public_from_secret(b"4" * 32) and n == 0
    alice.advance_sending_chain(7)
    assert alice.sending_position()[1] == 7
    h, c = alice.encrypt(b"after crash")
    assert h.n == 7
    assert bob.decrypt(h, c, spk=BOB_SPK) == b"after crash"
    with pytest.raises(ValueError):
        alice.advance_sending_chain(-1)


def test_serialisation_roundtrip_mid_conversation() -> None:
    alice, bob = status_pair()
    h, c = alice.encrypt(b"one")
    bob.decrypt(h, c, spk=BOB_SPK)
    blob = bob.to_bytes()
    bob2 = Ratchet.from_bytes(blob, keygen=scripted("5", "7"))
    assert bob2.to_bytes() == blob
    assert bob2.debug_state() == bob.debug_state()
    h2, c2 = alice.encrypt(b"two")
    assert bob2.decrypt(h2, c2) == b"two"
    hb, cb = bob2.encrypt(b"back")
    assert alice.decrypt(hb, cb) == b"back"


def test_a_snapshot_serialises_the_state_it_was_taken_at_whatever_happens_after() -> None:
    """Writes take a snapshot and serialise it only at commit time: by then the ratchet has moved on (keys kept,
    deleted, a DH step), and the snapshot must still give exactly the bytes of the moment it was taken."""
    alice, bob = status_pair()
    msgs = [alice.encrypt(b"m%d" % i) for i in range(5)]
    bob.decrypt(*msgs[0], spk=BOB_SPK)
    bob.decrypt(*msgs[2])  # keeps m1 as skipped, m0 and m2 until confirmed
    expected = bob.to_bytes()
    snap = bob.snapshot()
    bob.delete_message_key(msgs[0][0].dh, msgs[0][0].n)
    bob.decrypt(*msgs[4])
    bob.encrypt(b"reply: a DH step and a new sending chain")
    assert bob.to_bytes() != expected
    assert snap.to_bytes() == expected
    assert snap.to_bytes() is snap.to_bytes()  # serialised once
    back = Ratchet.from_bytes(snap.to_bytes())
    assert back.has_message_key(msgs[0][0].dh, msgs[0][0].n) and back.decrypt(*msgs[0]) == b"m0"


def test_state_with_token_spk_serialises() -> None:
    _, bob = status_pair()
    again = Ratchet.from_bytes(bob.to_bytes())
    assert again.debug_state()["dhs_priv"] is None


def test_corrupt_state_is_invalid() -> None:
    alice, bob = status_pair()
    h, c = alice.encrypt(b"x")
    bob.decrypt(h, c, spk=BOB_SPK)
    blob = bob.to_bytes()
    for i in range(0, len(blob), 7):
        bad = bytearray(blob)
        bad[i] ^= 0x10
        with pytest.raises(InvalidState):
            Ratchet.from_bytes(bytes(bad))
    for cut in (0, 3, 10, len(blob) - 1):
        with pytest.raises(InvalidState):
            Ratchet.from_bytes(blob[:cut])
    with pytest.raises(InvalidState):
        Ratchet.from_bytes("not bytes")  # type: ignore[arg-type]


def _reseal(version: int, body: bytes) -> bytes:
    import hashlib

    head = b"KADR" + bytes([version]) + body
    return head + hashlib.sha256(head).digest()


def test_unknown_version_and_migration_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    _, bob = status_pair()
    blob = bob.to_bytes()
    body = blob[5:-32]
    with pytest.raises(InvalidState):
        Ratchet.from_bytes(_reseal(rt.STATE_VERSION + 1, body))
    with pytest.raises(InvalidState):
        Ratchet.from_bytes(_reseal(0, body[::-1]))  # no migration registered for v0
    monkeypatch.setitem(rt.MIGRATIONS, 0, lambda old: old[::-1])  # a "v0" that stored the body reversed
    migrated = Ratchet.from_bytes(_reseal(0, body[::-1]))
    assert migrated.to_bytes() == blob


def test_repr_never_shows_keys() -> None:
    alice, bob = status_pair()
    h, c = alice.encrypt(b"x")
    bob.decrypt(h, c, spk=BOB_SPK)
    st = bob.debug_state()
    text = repr(bob) + repr(bob._s)
    secrets = [st["root_key"], st["send_ck"], st["recv_ck"], st["dhs_priv"] or ""]
    secrets += [k["mk"] for k in st["stored_message_keys"]]
    for s in filter(None, secrets):
        assert s not in text and s[:16] not in text


def test_bad_inputs_are_typed() -> None:
    with pytest.raises(MalformedKey):
        Ratchet.initiator(STATUS_GO, SK[:31], BOB_SPK.public_key())
    with pytest.raises(MalformedKey):
        Ratchet.initiator(STATUS_GO, SK, BOB_SPK.public_key()[:32])
    with pytest.raises(MalformedKey):
        Ratchet.initiator(SPEC, SK, BOB_SPK.public_key())
    alice, bob = status_pair()
    h, c = alice.encrypt(b"x")
    before = bob.to_bytes()
    with pytest.raises(MalformedKey):
        bob.decrypt(Header(h.dh[:32], 0, 0), c, spk=BOB_SPK)
    with pytest.raises(DecryptFailed):
        bob.decrypt(Header(h.dh, 2**32, 0), c, spk=BOB_SPK)
    with pytest.raises(DecryptFailed):
        bob.decrypt(h, c[:20], spk=BOB_SPK)
    assert bob.to_bytes() == before
    assert profile_by_name("status-go") is STATUS_GO and profile_by_name("spec") is SPEC
    with pytest.raises(ValueError):
        profile_by_name("signal")
