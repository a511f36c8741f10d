"""Live interop with js-waku (``@waku/message-encryption`` 0.0.38 under Node, pinned by package-lock.json).

Our code seals (signed with an in-memory key and with a SoftHSM2 token key) and js-waku opens and reports
the signer; js-waku seals and we open (ECDH in the token for the SoftHSM2 identity). ``.ci/setup`` installs the
peer with ``npm ci``; without it these tests fail with that instruction instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.daemon import waku_io
from agent.core import secp256k1
from agent.core.errors import DecryptFailed
from agent.core.hashing import keccak256
from agent.core.keyops import KeyOps
from agent.core.waku import open_wire, topics
from backends.memory import MemoryKey

HERE = Path(__file__).resolve().parent
SIZES = [0, 1, 2, 186, 187, 188, 253, 254, 255, 256, 257, 1000, 65535, 65536, 70000]


class Peer:
    """The node process; one JSON line out, one JSON line back."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None or not (HERE / "node_modules" / "@waku" / "message-encryption").is_dir():
            pytest.fail("js-waku interop peer missing: run .ci/setup (npm ci in tests/interop) with Node >= 20")
        self.proc = subprocess.Popen(
            [node, "peer.mjs"], cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def __call__(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "js-waku peer exited"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


ME = MemoryKey(keccak256(b"interop/me"))
JS = MemoryKey(keccak256(b"interop/js"))  # the key js-waku signs with and opens with
SYM = keccak256(b"interop/sym")


def _payload(n: int) -> bytes:
    return bytes((i * 13 + n) & 0xFF for i in range(n))


def _js_opens(peer: Peer, wire: bytes, *, sym: bool = False) -> dict[str, Any]:
    if sym:
        return peer(op="open", mode="symmetric", wire=wire.hex(), sym_key=SYM.hex())
    return peer(op="open", mode="asymmetric", wire=wire.hex(), priv=JS.secret_for_export().hex())


def _check_signed_by(reply: dict[str, Any], payload: bytes, signer: KeyOps | None) -> None:
    assert reply["ok"], reply
    assert reply["payload"] == payload.hex()
    if signer is None:
        assert reply["signer"] is None
    else:
        assert reply["signer"] == secp256k1.decompress(signer.public_key()).hex()


# --- we seal, js-waku opens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_js_opens_our_asymmetric_signed(peer: Peer, n: int) -> None:
    payload = _payload(n)
    wire = waku_io.seal(payload, to=JS.public_key(), signer=ME)
    _check_signed_by(_js_opens(peer, wire), payload, ME)


@pytest.mark.parametrize("n", [0, 255, 256, 70000])
def test_js_opens_our_unsigned_and_symmetric(peer: Peer, n: int) -> None:
    payload = _payload(n)
    _check_signed_by(_js_opens(peer, waku_io.seal(payload, to=JS.public_key())), payload, None)
    _check_signed_by(_js_opens(peer, waku_io.seal(payload, sym_key=SYM), sym=True), payload, None)
    _check_signed_by(_js_opens(peer, waku_io.seal(payload, sym_key=SYM, signer=ME), sym=True), payload, ME)


def test_js_refuses_our_message_for_someone_else(peer: Peer) -> None:
    wire = waku_io.seal(b"not for js", to=ME.public_key(), signer=ME)
    reply = _js_opens(peer, wire)
    assert not reply["ok"] and "MAC" in reply["error"]


# --- js-waku seals, we open ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_we_open_js_asymmetric_signed(peer: Peer, n: int) -> None:
    payload = _payload(n)
    reply = peer(op="seal", mode="asymmetric", payload=payload.hex(),
                 to=secp256k1.decompress(ME.public_key()).hex(), sig_priv=JS.secret_for_export().hex())  # fmt: skip
    assert reply["ok"], reply
    opened = open_wire(bytes.fromhex(reply["wire"]), me=ME)
    assert opened.payload == payload
    opened.require_signer(JS.public_key())


@pytest.mark.parametrize("n", [0, 256, 70000])
def test_we_open_js_symmetric_and_unsigned(peer: Peer, n: int) -> None:
    payload = _payload(n)
    sym = peer(op="seal", mode="symmetric", payload=payload.hex(), sym_key=SYM.hex(),
               sig_priv=JS.secret_for_export().hex())  # fmt: skip
    opened = open_wire(bytes.fromhex(sym["wire"]), sym_key=SYM)
    assert opened.payload == payload and opened.signer_pub == secp256k1.decompress(JS.public_key())
    asym = peer(op="seal", mode="asymmetric", payload=payload.hex(), to=secp256k1.decompress(ME.public_key()).hex())
    opened = open_wire(bytes.fromhex(asym["wire"]), me=ME)
    assert opened.payload == payload and opened.signer_pub is None


def test_we_open_the_full_js_encoder_output(peer: Peer) -> None:
    """createEncoder → WakuMessage proto object (version 1); its payload field is our wire."""
    name = topics.negotiated_name(ME.dh(JS.public_key()))
    key = topics.negotiated_key(ME.dh(JS.public_key()))
    reply = peer(op="encode_message", mode="symmetric", payload="c0ffee", sym_key=key.hex(),
                 sig_priv=JS.secret_for_export().hex(), content_topic=topics.content_topic(name))  # fmt: skip
    assert reply["ok"] and reply["version"] == 1 and reply["content_topic"] == topics.negotiated_topic(ME.dh(JS.public_key()))
    opened = open_wire(bytes.fromhex(reply["wire"]), sym_key=key)
    assert opened.payload == b"\xc0\xff\xee"
    opened.require_signer(JS.public_key())
    reply = peer(op="encode_message", mode="asymmetric", payload="00", to=secp256k1.decompress(ME.public_key()).hex())
    assert reply["ok"] and reply["version"] == 1
    assert open_wire(bytes.fromhex(reply["wire"]), me=ME).payload == b"\x00"


def test_we_refuse_js_messages_for_someone_else_and_tampered(peer: Peer) -> None:
    reply = peer(op="seal", mode="asymmetric", payload="aa", to=secp256k1.decompress(JS.public_key()).hex())
    with pytest.raises(DecryptFailed):
        open_wire(bytes.fromhex(reply["wire"]), me=ME)
    reply = peer(op="seal", mode="symmetric", payload="aa", sym_key=SYM.hex())
    wire = bytearray.fromhex(reply["wire"])
    wire[5] ^= 1
    with pytest.raises(DecryptFailed):
        open_wire(bytes(wire), sym_key=SYM)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=3000), signed=st.booleans(), asym=st.booleans())
def test_random_round_trips_both_ways(peer: Peer, payload: bytes, signed: bool, asym: bool) -> None:
    signer = ME if signed else None
    ours = waku_io.seal(payload, to=JS.public_key(), signer=signer) if asym else waku_io.seal(payload, sym_key=SYM, signer=signer)
    _check_signed_by(_js_opens(peer, ours, sym=not asym), payload, signer)
    req: dict[str, Any] = {"op": "seal", "payload": payload.hex()}
    if signed:
        req["sig_priv"] = JS.secret_for_export().hex()
    if asym:
        theirs = peer(**req, mode="asymmetric", to=secp256k1.decompress(ME.public_key()).hex())
        opened = open_wire(bytes.fromhex(theirs["wire"]), me=ME)
    else:
        theirs = peer(**req, mode="symmetric", sym_key=SYM.hex())
        opened = open_wire(bytes.fromhex(theirs["wire"]), sym_key=SYM)
    assert opened.payload == payload
    assert opened.signer_pub == (secp256k1.decompress(JS.public_key()) if signed else None)


# --- the identity in a SoftHSM2 token -----------------------------------------------------------------------------


@pytest.fixture
def token_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyOps]:
    """A fresh SoftHSM2 token with a freshly generated identity key, through the real PKCS#11 backend."""
    from backends.pkcs11.backend import Pkcs11Backend
    from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken

    with SoftHSMToken() as tok:
        monkeypatch.setenv("SOFTHSM2_CONF", tok.conf)
        backend = Pkcs11Backend(SOFTHSM_MODULE, tok.label, namespace=os.urandom(8), pin_source=lambda _: tok.pin)
        try:
            backend.generate_identity()
            yield backend.identity()
        finally:
            backend.close()


def test_token_identity_signs_for_js_and_opens_js_messages(peer: Peer, token_identity: KeyOps) -> None:
    ik = token_identity
    ik_pub65 = secp256k1.decompress(ik.public_key()).hex()
    for n in (0, 1, 255, 256, 1000, 70000):
        payload = _payload(n)
        # token signs (random k, maybe high S: normalised on the host), js-waku opens and names the token key
        _check_signed_by(_js_opens(peer, waku_io.seal(payload, to=JS.public_key(), signer=ik)), payload, ik)
        _check_signed_by(_js_opens(peer, waku_io.seal(payload, sym_key=SYM, signer=ik), sym=True), payload, ik)
        # js-waku seals to the token identity; the ECDH happens in the token
        reply = peer(op="seal", mode="asymmetric", payload=payload.hex(), to=ik_pub65,
                     sig_priv=JS.secret_for_export().hex())  # fmt: skip
        opened = open_wire(bytes.fromhex(reply["wire"]), me=ik)
        assert opened.payload == payload
        opened.require_signer(JS.public_key())
    # the negotiated topic: token ECDH on our side, in-memory on js's side, same key and topic
    secret = topics.negotiated_secret(ik, JS.public_key())
    assert secret == JS.dh(ik.public_key())
    reply = peer(op="seal", mode="symmetric", payload="01", sym_key=topics.negotiated_key(secret).hex(),
                 sig_priv=JS.secret_for_export().hex())  # fmt: skip
    assert open_wire(bytes.fromhex(reply["wire"]), sym_key=topics.negotiated_key(secret)).payload == b"\x01"
    # someone else's traffic costs one token ECDH and fails at the MAC
    other = peer(op="seal", mode="asymmetric", payload="02", to=secp256k1.decompress(JS.public_key()).hex())
    with pytest.raises(DecryptFailed):
        open_wire(bytes.fromhex(other["wire"]), me=ik)
