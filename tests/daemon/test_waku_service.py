"""WakuHandlers in process, on a fake token whose ECDH blocks until released: the handlers really pass the gate
(BUSY at its bound, per process), wires that can be refused without the token never take a ticket, the
negotiated key is cached (one token ECDH per peer) and never equals the raw secret."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.daemon import waku_io
from agent.core.errors import BadEphemeralKey, DecryptFailed, WireTooShort
from agent.core.hashing import keccak256
from agent.core.waku import topics
from agent.daemon.peercred import PeerCred
from agent.daemon.service import ClientContext, error_code
from agent.daemon.token_gate import GateBusy
from agent.daemon.waku_service import WakuHandlers, gate_limits
from agent.pb.keyagent import agent_pb2 as pb
from backends.memory import MemoryKey

ME = MemoryKey(keccak256(b"waku-service/me"))
PEER = MemoryKey(keccak256(b"waku-service/peer"))
SYM = keccak256(b"waku-service/sym")


class SlowIdentity:
    """KeyOps over ME whose dh/sign wait on ``release`` and count token calls."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.calls = 0
        self.entered = threading.Semaphore(0)

    def public_key(self) -> bytes:
        return ME.public_key()

    def dh(self, peer: bytes) -> bytes:
        self.calls += 1
        self.entered.release()
        self.release.wait(30)
        return ME.dh(peer)

    def sign(self, digest: bytes) -> bytes:
        self.calls += 1
        self.entered.release()
        self.release.wait(30)
        return ME.sign(digest)


def _handlers(workers: int = 4) -> tuple[WakuHandlers, SlowIdentity]:
    ik = SlowIdentity()
    service: Any = SimpleNamespace(backend=SimpleNamespace(identity=lambda: ik),
                                   config=SimpleNamespace(workers=workers, request_timeout=30.0))
    return WakuHandlers(service), ik


def _ctx(pid: int, conn: int) -> ClientContext:
    return ClientContext(cred=PeerCred(pid=pid, uid=1000, gid=1000), exe="test", conn=conn, owner=True)


def _open(wire: bytes) -> pb.Request:
    return pb.Request(waku_open=pb.WakuOpenRequest(wire=wire))


def test_gate_limits_stay_below_the_worker_count() -> None:
    assert gate_limits(16) == (8, 4)
    assert gate_limits(1) == (2, 1)
    assert gate_limits(256) == (32, 16)
    for workers in range(1, 300):  # waiting tickets hold workers: at most half of them (2 for tiny pools)
        capacity, per_client = gate_limits(workers)
        assert 2 <= capacity <= max(2, workers // 2) and 1 <= per_client <= capacity // 2


def test_open_passes_the_gate_and_a_flooding_process_gets_busy() -> None:
    h, ik = _handlers(workers=4)  # capacity 2, one ticket per process
    wire = waku_io.seal(b"hi", to=ME.public_key(), signer=PEER)
    assert h.open(_open(wire), _ctx(1, 1)).response.waku_open.payload == b"hi"
    ik.release.clear()
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(h.open(_open(wire), _ctx(1, 1))))
    t.start()
    assert ik.entered.acquire(timeout=10) and ik.entered.acquire(timeout=10)  # first open done, second inside
    with pytest.raises(GateBusy):  # the same process on another connection: over its share, refused at once
        h.open(_open(wire), _ctx(1, 2))
    with pytest.raises(GateBusy):  # signing passes the same gate
        h.seal(pb.Request(waku_seal=pb.WakuSealRequest(payload=b"x", to=PEER.public_key(), sign=True)), _ctx(1, 3))
    other: list[Any] = []
    t2 = threading.Thread(target=lambda: other.append(h.open(_open(wire), _ctx(2, 7))))
    t2.start()  # another process still finds room (it waits for the slot)
    for _ in range(1000):
        if h.gate.stats().queued + h.gate.stats().running == 2:
            break
        time.sleep(0.001)
    ik.release.set()
    t.join(10)
    t2.join(10)
    assert out[0].response.waku_open.signer_public_key and other[0].response.waku_open.payload == b"hi"
    st = h.gate.stats()
    assert (st.busy, st.queued, st.running) == (2, 0, 0)


def test_wires_refused_before_the_token_take_no_ticket() -> None:
    h, ik = _handlers()
    good = waku_io.seal(b"hi", to=ME.public_key())
    with pytest.raises(WireTooShort):
        h.open(_open(good[:113]), _ctx(1, 1))
    for bad in (b"\x02" + good[1:], good[:64] + bytes([good[64] ^ 1]) + good[65:]):  # prefix, R off the curve
        with pytest.raises(BadEphemeralKey):
            h.open(_open(bad), _ctx(1, 1))
    assert ik.calls == 0 and h.gate.stats().served == 0
    foreign = waku_io.seal(b"hi", to=PEER.public_key())
    with pytest.raises(DecryptFailed):
        h.open(_open(foreign), _ctx(1, 1))
    assert ik.calls == 1 and h.gate.stats().served == 1  # someone else's traffic: one ECDH, then the MAC fails


def test_negotiated_is_cached_and_never_the_raw_secret() -> None:
    h, ik = _handlers()
    req = pb.Request(waku_negotiated=pb.WakuNegotiatedRequest(peer_identity=PEER.public_key()))
    first = h.negotiated(req, _ctx(1, 1)).response.waku_negotiated
    second = h.negotiated(req, _ctx(1, 1)).response.waku_negotiated
    secret = PEER.dh(ME.public_key())
    assert first == second and ik.calls == 1
    assert first.sym_key == topics.negotiated_key(secret) and secret not in first.SerializeToString()
    assert first.content_topic == topics.negotiated_topic(secret)


def test_contact_code_uses_no_token_operation() -> None:
    h, ik = _handlers()
    out = h.contact_code(pb.Request(waku_contact_code=pb.WakuContactCodeRequest()), _ctx(1, 1))
    cc = out.response.waku_contact_code
    assert cc.sym_key == topics.contact_code_key(ME.public_key()) and ik.calls == 0
    assert cc.partitioned_topic == topics.partitioned_topic(ME.public_key())


_WIRE = waku_io.seal(b"fuzz me", to=ME.public_key(), signer=PEER)
_ALLOWED = {pb.Error.BAD_REQUEST, pb.Error.DECRYPT_FAILED, pb.Error.BAD_SIGNATURE}


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=600),
    st.tuples(st.integers(0, len(_WIRE) - 1), st.integers(0, 7)).map(
        lambda f: _WIRE[: f[0]] + bytes([_WIRE[f[0]] ^ (1 << f[1])]) + _WIRE[f[0] + 1:]),
    st.integers(0, len(_WIRE) + 64).map(lambda n: (_WIRE + bytes(64))[:n]),
), sym=st.booleans())
def test_any_wire_gives_the_payload_or_a_typed_error(data: bytes, sym: bool) -> None:
    """Random bytes, single bit flips, truncations and extensions: never an INTERNAL error, never a wrong payload."""
    h, _ = _handlers()
    req = pb.Request(waku_open=pb.WakuOpenRequest(wire=data, sym_key=SYM) if sym else pb.WakuOpenRequest(wire=data))
    try:
        out = h.open(req, _ctx(1, 1)).response.waku_open
    except Exception as exc:
        assert error_code(exc) in _ALLOWED, repr(exc)
    else:
        assert not sym and data == _WIRE and out.payload == b"fuzz me"
