"""The agent's Waku payload requests: waku_seal, waku_open, waku_negotiated, waku_contact_code.

The protocol work is :mod:`agent.core.waku` (pure) with OS randomness from
:mod:`agent.daemon.waku_io`; this module adds policy and cost control around it:

* **Not an ECDH oracle.** ``waku_open`` does the ECDH of an asymmetric wire with our identity key but returns only
  an authenticated, decoded payload (plus the signer's public key and the mode): a caller learns nothing unless
  the wire's MAC verifies under the shared secret, which it cannot forge without knowing that secret. Wires that
  can be rejected without the token (too short, bad ephemeral key) are rejected before any token call.
* **Negotiated topic policy.** ``waku_negotiated`` computes DH(our IK, peer IK) in the token and returns the
  *derived* topic key ``PBKDF2(hex(secret), 65356)`` and content topic, never the secret: status-go subscribes its
  Waku filter with that key, so a local client must have it. The key is useless for anything but that one
  topic (ECIES, X3DH and the double ratchet all derive their keys from their DH outputs differently, and PBKDF2
  does not run backwards), so handing it to an admitted client gives it nothing the socket does not already give
  it (it could ask the agent to open and seal on that topic). Derived keys are cached per (identity, peer) in
  memory, at most :data:`NEGOTIATED_CACHE` entries: status-go loads every contact's topic at start.
  (status-go's own filter uses hex(secret) as its chat id; a client of the agent keys its filter by the topic.)
* **Flood control.** Every token operation here (the open's ECDH, the seal's signature, the negotiated ECDH)
  passes a :class:`agent.daemon.token_gate.TokenGate` keyed ``(uid, pid, connection)``: at most
  :data:`GATE_CAPACITY`-ish tickets at once, half of them for one process, round-robin across uids, processes
  and connections; a full gate answers BUSY at once. The capacity stays below the request worker count, so a
  flood never ties up every worker thread and other requests (and the BUSY answers) keep flowing.
* ``waku_contact_code`` needs no secret: the channel is derived from our public key (anyone can derive it).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable

from agent.daemon import waku_io
from agent.core import secp256k1
from agent.core.keyops import KeyOps
from agent.core.waku import MAX_PAYLOAD, open_wire, topics
from agent.daemon.handler_api import (
    BadRequest,
    ClientContext,
    HandlerHost,
    Outcome,
    peer_public_key,
)
from agent.daemon.token_gate import ClientKey, TokenGate
from agent.pb.keyagent import agent_pb2 as pb

__all__ = ["WakuHandlers", "GatedKey", "waku_handlers", "gate_limits", "NEGOTIATED_CACHE", "GATE_CAPACITY"]

#: Derived negotiated keys kept in memory (one per contact; an entry is ~100 bytes).
NEGOTIATED_CACHE = 4096
#: Upper bound of the gate's capacity; the actual capacity is also kept at half the worker threads.
GATE_CAPACITY = 32
#: Token operations running at once: two keep a one-thread token worker busy while the next caller wakes up.
GATE_SLOTS = 2

SYM_KEY_LEN = 32


def gate_limits(workers: int) -> tuple[int, int]:
    """(capacity, per_client) for a daemon with ``workers`` request threads.

    Capacity is at most half the workers (waiting tickets block a worker thread each; the other half keeps
    serving every other request), and one process may hold at most half of it (a second client always finds room
    while only one floods).
    """
    capacity = max(2, min(GATE_CAPACITY, workers // 2))
    return capacity, max(1, capacity // 2)


class GatedKey:
    """A KeyOps whose token operations pass the gate under one client's key (the core calls it unchanged)."""

    def __init__(self, inner: KeyOps, gate: TokenGate, key: ClientKey) -> None:
        self._inner, self._gate, self._key = inner, gate, key

    def public_key(self) -> bytes:
        return self._inner.public_key()

    def sign(self, digest: bytes) -> bytes:
        return self._gate.run(self._key, lambda: self._inner.sign(digest))

    def dh(self, peer_public: bytes) -> bytes:
        return self._gate.run(self._key, lambda: self._inner.dh(peer_public))




def _sym_key(data: bytes) -> bytes:
    if len(data) != SYM_KEY_LEN:
        raise BadRequest(f"sym_key must be exactly {SYM_KEY_LEN} bytes")
    return bytes(data)


class WakuHandlers:
    """The four Waku handlers of one :class:`Service` (they run in its worker threads)."""

    def __init__(self, service: "HandlerHost") -> None:
        self._service = service
        capacity, per_client = gate_limits(service.config.workers)
        slots = GATE_SLOTS
        if os.environ.get("KEYAGENT_BENCH_UNGATED") == "1":  # benchmark baseline only: FIFO in the backend
            capacity = per_client = slots = 1 << 20
        self.gate = TokenGate(capacity=capacity, per_client=per_client, slots=slots,
                              timeout=service.config.request_timeout, client_depth=2)
        self._cache: OrderedDict[tuple[bytes, bytes], tuple[bytes, str, bytes]] = OrderedDict()
        self._cache_mu = threading.Lock()

    def handlers(self) -> dict[str, Callable[[pb.Request, ClientContext], Outcome]]:
        return {
            "waku_seal": self.seal,
            "waku_open": self.open,
            "waku_negotiated": self.negotiated,
            "waku_contact_code": self.contact_code,
        }

    def _identity(self, ctx: ClientContext) -> GatedKey:
        return GatedKey(self._service.backend.identity(), self.gate, (ctx.cred.uid, ctx.cred.pid, ctx.conn))

    # --- handlers ---------------------------------------------------------------------------------------------
    def seal(self, req: pb.Request, ctx: ClientContext) -> Outcome:

        r = req.waku_seal
        which = r.WhichOneof("key")
        if which is None:
            raise BadRequest("give the recipient's chat key (to) or a symmetric key (sym_key)")
        if len(r.payload) > MAX_PAYLOAD:
            raise BadRequest(f"payload is larger than {MAX_PAYLOAD} bytes")
        signer = self._identity(ctx) if r.sign else None
        if which == "to":
            to = peer_public_key(r.to, "to")
            wire = waku_io.seal(bytes(r.payload), to=to, signer=signer)
            mode, peer = pb.WAKU_ASYMMETRIC, to.hex()
        else:
            wire = waku_io.seal(bytes(r.payload), sym_key=_sym_key(r.sym_key), signer=signer)
            mode, peer = pb.WAKU_SYMMETRIC, ""
        detail = ("asymmetric" if mode == pb.WAKU_ASYMMETRIC else "symmetric") + (",signed" if r.sign else "")
        return Outcome(pb.Response(waku_seal=pb.WakuSealResponse(wire=wire, mode=mode)),
                        key="identity" if r.sign else "", peer=peer, detail=detail)

    def open(self, req: pb.Request, ctx: ClientContext) -> Outcome:

        r = req.waku_open
        if not r.wire:
            raise BadRequest("wire is empty")
        if r.HasField("sym_key"):
            opened = open_wire(bytes(r.wire), sym_key=_sym_key(r.sym_key))
            mode, key = pb.WAKU_SYMMETRIC, ""
        else:
            opened = open_wire(bytes(r.wire), me=self._identity(ctx))
            mode, key = pb.WAKU_ASYMMETRIC, "identity"
        out = pb.WakuOpenResponse(payload=opened.payload, signer_public_key=opened.signer_pub or b"", mode=mode)
        signer = secp256k1.compress(opened.signer_pub).hex() if opened.signer_pub else ""
        return Outcome(pb.Response(waku_open=out), key=key, peer=signer,
                        detail="asymmetric" if mode == pb.WAKU_ASYMMETRIC else "symmetric")

    def negotiated(self, req: pb.Request, ctx: ClientContext) -> Outcome:

        peer = peer_public_key(req.waku_negotiated.peer_identity, "peer_identity")
        me = self._identity(ctx)
        slot = (me.public_key(), peer)
        with self._cache_mu:
            hit = self._cache.get(slot)
            if hit is not None:
                self._cache.move_to_end(slot)
        if hit is None:
            secret = topics.negotiated_secret(me, peer)  # one gated token ECDH; the secret stays in here
            name = topics.negotiated_name(secret)
            hit = (topics.negotiated_key(secret), topics.content_topic(name), topics.topic_bytes(name))
            del secret, name
            with self._cache_mu:
                self._cache[slot] = hit
                while len(self._cache) > NEGOTIATED_CACHE:
                    self._cache.popitem(last=False)
        key, content_topic, topic = hit
        out = pb.WakuNegotiatedResponse(sym_key=key, content_topic=content_topic, topic=topic)
        return Outcome(pb.Response(waku_negotiated=out), key="identity", peer=peer.hex())

    def contact_code(self, req: pb.Request, ctx: ClientContext) -> Outcome:

        pub = self._service.backend.identity().public_key()
        name = topics.contact_code_name(pub)
        out = pb.WakuContactCodeResponse(
            content_topic=topics.content_topic(name), sym_key=topics.key_from_password(name),
            topic=topics.topic_bytes(name), partitioned_topic=topics.partitioned_topic(pub),
        )
        return Outcome(pb.Response(waku_contact_code=out))


def waku_handlers(service: "HandlerHost") -> dict[str, Callable[[pb.Request, ClientContext], Outcome]]:
    """The handler table entries :class:`Service` adds for the Waku requests."""
    return WakuHandlers(service).handlers()
