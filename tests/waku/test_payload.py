"""One-call seal/open: js-waku's RNG draw order reproduces its wires; both modes round-trip with the signer."""

from __future__ import annotations

from typing import Any

import pytest

from agent.daemon import waku_io
from agent.core import secp256k1
from agent.core.errors import BadEphemeralKey, DecryptFailed, MalformedKey
from agent.core.hashing import keccak256
from agent.core.waku import open_wire, seal
from backends.memory import MemoryKey
from tests.waku.helpers import CountingKey, Draws, h


def test_recorded_draws_reproduce_every_vector_wire(doc: dict[str, Any]) -> None:
    keys = doc["keys"]
    signer = CountingKey(h(keys["signer_priv"]))
    for v in doc["vectors"]:
        d = v["random_draws"]
        rng = Draws([h(x) for x in d["padding"] + d["encryption"]])
        common = {"signer": signer if v["signed"] else None, "rng": rng}
        if v["mode"] == "asymmetric":
            wire = seal(h(v["payload"]), to=h(keys["recipient_pub"]), **common)  # type: ignore[arg-type]
        else:
            wire = seal(h(v["payload"]), sym_key=h(keys["sym_key"]), **common)  # type: ignore[arg-type]
        assert wire == h(v["wire"]), v["id"]
        assert rng.chunks == []
    assert signer.dh_calls == 0 and signer.sign_calls == 12


def test_open_wire_both_modes(doc: dict[str, Any]) -> None:
    keys = doc["keys"]
    me = MemoryKey(h(keys["recipient_priv"]))
    for v in doc["vectors"]:
        if v["mode"] == "asymmetric":
            opened = open_wire(h(v["wire"]), me=me)
        else:
            opened = open_wire(h(v["wire"]), sym_key=h(keys["sym_key"]))
        assert opened.payload == h(v["payload"])
        assert opened.signer_pub == (h(keys["signer_pub"]) if v["signed"] else None)


def test_negotiated_example_opens(doc: dict[str, Any]) -> None:
    ex = doc["status"]["negotiated"]["example"]
    opened = open_wire(h(ex["wire"]), sym_key=h(doc["status"]["negotiated"]["sym_key"]))
    assert opened.payload == h(ex["payload"]) and opened.signer_pub == h(ex["signer_pub"])


def test_edge_wrapper_round_trips_with_os_randomness() -> None:
    me = MemoryKey(keccak256(b"waku-test/me"))
    sender = MemoryKey(keccak256(b"waku-test/sender"))
    for n in (0, 1, 255, 256, 5000):
        wire = waku_io.seal(b"\x5a" * n, to=me.public_key(), signer=sender)
        opened = open_wire(wire, me=me)
        assert opened.payload == b"\x5a" * n
        opened.require_signer(sender.public_key())
        # fresh randomness every time: two seals of the same payload differ
        assert waku_io.seal(b"\x5a" * n, to=me.public_key()) != waku_io.seal(b"\x5a" * n, to=me.public_key())
    key = keccak256(b"sym")
    assert open_wire(waku_io.seal(b"hi", sym_key=key), sym_key=key).payload == b"hi"
    with pytest.raises(DecryptFailed):
        open_wire(waku_io.seal(b"hi", sym_key=key), sym_key=keccak256(b"other"))


def test_exactly_one_mode() -> None:
    key = b"\x01" * 32
    with pytest.raises(ValueError):
        seal(b"x", rng=waku_io.rng)
    with pytest.raises(ValueError):
        seal(b"x", to=MemoryKey(key).public_key(), sym_key=key, rng=waku_io.rng)
    with pytest.raises(ValueError):
        open_wire(b"x")
    with pytest.raises(ValueError):
        open_wire(b"x", me=MemoryKey(key), sym_key=key)


def test_bad_recipient_fails_before_signing() -> None:
    signer = CountingKey(b"\x02" * 32)
    with pytest.raises(MalformedKey):
        seal(b"x", to=b"\x04" + b"\x00" * 64, signer=signer, rng=waku_io.rng)
    assert signer.sign_calls == 0


def test_invalid_ephemeral_draw_is_redrawn() -> None:
    me = MemoryKey(b"\x03" * 32)
    chunks = [b"\x00" * 254, b"\x00" * 32, b"\xff" * 32, b"\x09" * 32, b"\x01" * 16]  # pad, 0, ≥n, ok, iv
    wire = seal(b"", to=me.public_key(), rng=Draws(chunks))
    assert wire[:65] == secp256k1.decompress(MemoryKey(b"\x09" * 32).public_key())
    assert open_wire(wire, me=me).payload == b""


def test_open_wire_spends_no_dh_on_a_bad_prefix(doc: dict[str, Any]) -> None:
    me = CountingKey(h(doc["keys"]["recipient_priv"]))
    wire = bytearray(h(doc["vectors"][0]["wire"]))
    wire[0] = 3
    with pytest.raises(BadEphemeralKey):
        open_wire(bytes(wire), me=me)
    assert me.dh_calls == 0
