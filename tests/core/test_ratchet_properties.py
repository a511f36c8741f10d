"""Property tests: random two-party conversations with reordering, drops, duplicates, confirmations and
tampering, in both profiles and with both sides sending."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.errors import ProtocolError
from agent.core.keys import public_from_secret
from agent.core.ratchet import SPEC, STATUS_GO, Header, KeyGen, Profile, Ratchet
from backends.memory import MemoryKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

SK = hashlib.sha256(b"property shared key").digest()


def counter_keygen(profile: Profile, label: bytes) -> KeyGen:
    """Deterministic ratchet keys, so that hypothesis can replay a failing example exactly."""
    count = 0

    def gen() -> tuple[bytes, bytes]:
        nonlocal count
        count += 1
        secret = hashlib.sha256(label + count.to_bytes(4, "big")).digest()
        if profile.curve == "secp256k1":
            return secret, public_from_secret(secret)
        return secret, X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()

    return gen


@dataclass
class Sent:
    sender: int
    header: Header
    ciphertext: bytes
    ad: bytes
    plaintext: bytes
    delivered: bool = False
    confirmed: bool = False


class Conversation:
    def __init__(self, profile: Profile, token_spk: bool) -> None:
        spk_secret = hashlib.sha256(b"spk").digest()
        spk_priv, spk_pub = counter_keygen(profile, b"spk")()
        self.spk = MemoryKey(spk_priv) if profile.curve == "secp256k1" and token_spk else None
        alice = Ratchet.initiator(profile, SK, spk_pub, keygen=counter_keygen(profile, b"alice"))
        bob = Ratchet.responder(profile, SK, spk_pub, None if self.spk else spk_priv,
                                keygen=counter_keygen(profile, b"bob"))
        self.parties = [alice, bob]
        self.sent: list[Sent] = []
        del spk_secret

    def send(self, sender: int, ad: bytes) -> None:
        pt = f"msg {len(self.sent)} from {sender}".encode()
        h, c = self.parties[sender].encrypt(pt, ad)
        self.sent.append(Sent(sender, h, c, ad, pt))

    def receive(self, m: Sent, header: Header | None = None, ct: bytes | None = None, ad: bytes | None = None) -> bytes:
        r = self.parties[1 - m.sender]
        return r.decrypt(header or m.header, m.ciphertext if ct is None else ct, m.ad if ad is None else ad,
                         spk=self.spk if m.sender == 0 else None)

    def expect_rejected(self, m: Sent, header: Header, ct: bytes, ad: bytes) -> None:
        r = self.parties[1 - m.sender]
        before = r.to_bytes()
        try:
            self.receive(m, header, ct, ad)
        except ProtocolError:
            pass
        else:
            raise AssertionError("tampered message was accepted")
        assert r.to_bytes() == before, "a rejected message changed the state"


ACTION = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("deliver"), st.integers(0, 10_000)),
    st.tuples(st.just("dup"), st.integers(0, 10_000)),
    st.tuples(st.just("drop"), st.integers(0, 10_000)),
    st.tuples(st.just("confirm"), st.integers(0, 10_000)),
    st.tuples(st.just("tamper"), st.integers(0, 10_000), st.sampled_from(["dh", "n", "pn", "ct", "ad"]),
              st.integers(0, 10_000)),
)


def run(profile: Profile, token_spk: bool, actions: list[tuple[object, ...]]) -> None:
    conv = Conversation(profile, token_spk)
    dropped: set[int] = set()
    for action in actions:
        kind = action[0]
        in_flight = [i for i, m in enumerate(conv.sent) if not m.delivered and i not in dropped]
        delivered = [i for i, m in enumerate(conv.sent) if m.delivered]
        if kind == "send":
            conv.send(int(action[1]), b"ad" if action[2] else b"")  # type: ignore[call-overload]
        elif kind == "deliver" and in_flight:
            m = conv.sent[in_flight[int(action[1]) % len(in_flight)]]  # type: ignore[call-overload]
            assert conv.receive(m) == m.plaintext
            m.delivered = True
        elif kind == "dup" and delivered:
            m = conv.sent[delivered[int(action[1]) % len(delivered)]]  # type: ignore[call-overload]
            if m.confirmed:  # confirmed (key deleted): must fail without state change
                conv.expect_rejected(m, m.header, m.ciphertext, m.ad)
            else:  # waiting for confirmation: decrypts again, as status-go
                assert conv.receive(m) == m.plaintext
        elif kind == "drop" and in_flight:
            dropped.add(in_flight[int(action[1]) % len(in_flight)])  # type: ignore[call-overload]
        elif kind == "confirm" and delivered:
            m = conv.sent[delivered[int(action[1]) % len(delivered)]]  # type: ignore[call-overload]
            conv.parties[1 - m.sender].delete_message_key(m.header.dh, m.header.n)
            m.confirmed = True
        elif kind == "tamper" and conv.sent:
            idx = int(action[1]) % len(conv.sent)  # type: ignore[call-overload]
            m = conv.sent[idx]
            bit = int(action[3])  # type: ignore[call-overload]
            h, ct, ad = m.header, m.ciphertext, m.ad
            what = action[2]
            if what == "dh":
                b = bytearray(h.dh)
                b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
                h = Header(bytes(b), h.n, h.pn)
            elif what == "n":
                h = Header(h.dh, h.n ^ (1 << (bit % 32)), h.pn)
            elif what == "pn":
                h = Header(h.dh, h.n, h.pn ^ (1 << (bit % 32)))
            elif what == "ct":
                b = bytearray(ct)
                b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
                ct = bytes(b)
            else:
                ad = bytes([ad[0] ^ (1 << (bit % 8))]) + ad[1:] if ad else bytes([bit % 256])
            conv.expect_rejected(m, h, ct, ad)
    # finally every message still in flight decrypts exactly as sent
    for i, m in enumerate(conv.sent):
        if not m.delivered and i not in dropped:
            assert conv.receive(m) == m.plaintext


ACTIONS = st.lists(ACTION, min_size=1, max_size=40)


@settings(max_examples=80, deadline=None)
@given(ACTIONS, st.booleans())
def test_random_conversations_status_go(actions: list[tuple[object, ...]], token_spk: bool) -> None:
    run(STATUS_GO, token_spk, actions)


@settings(max_examples=60, deadline=None)
@given(ACTIONS)
def test_random_conversations_spec(actions: list[tuple[object, ...]]) -> None:
    run(SPEC, False, actions)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([STATUS_GO, SPEC]), st.data())
def test_every_bit_of_one_message_is_authenticated(profile: Profile, data: st.DataObject) -> None:
    conv = Conversation(profile, token_spk=True)
    for _ in range(data.draw(st.integers(1, 3))):
        conv.send(data.draw(st.integers(0, 1)), b"")
    m = conv.sent[-1]
    encoded_bits = (len(m.header.dh) + 8) * 8
    bit = data.draw(st.integers(0, encoded_bits + len(m.ciphertext) * 8 - 1))
    h, ct = m.header, m.ciphertext
    if bit < len(h.dh) * 8:
        b = bytearray(h.dh)
        b[bit // 8] ^= 1 << (bit % 8)
        h = Header(bytes(b), h.n, h.pn)
    elif bit < len(h.dh) * 8 + 32:
        h = Header(h.dh, h.n ^ (1 << (bit % 32)), h.pn)
    elif bit < encoded_bits:
        h = Header(h.dh, h.n, h.pn ^ (1 << (bit % 32)))
    else:
        k = bit - encoded_bits
        b = bytearray(ct)
        b[k // 8] ^= 1 << (k % 8)
        ct = bytes(b)
    conv.expect_rejected(m, h, ct, m.ad)
    assert conv.receive(m) == m.plaintext  # the genuine message still decrypts afterwards
