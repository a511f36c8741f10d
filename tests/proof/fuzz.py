"""Fuzzing: random and mutated frames and protobuf requests against a live agent, and the in-process parsers.

    .venv/bin/python -m tests.proof.fuzz --target agent   --inputs 200000 [--seed N]
    .venv/bin/python -m tests.proof.fuzz --target decoder --inputs 1000000
    .venv/bin/python -m tests.proof.fuzz --target bundle  --inputs 1000000

Inputs come from seeds that are *valid* (requests of every type filled with the live agent's real keys, a
peer's signed bundle, ProtocolMessages the agent really produced) and are then mutated (bit flips, byte
replacement, truncation, insertion, splicing, length-field games) or replaced by random field values chosen
from the message descriptor, so the parsers are driven both deep and wide. Properties:

* agent: every input on its own connection gets zero or more well-formed Response frames and then the
  connection closes or answers, within a bound (no hang); the agent never dies; a bystander connection keeps
  getting answers (other connections unaffected); its resident memory stays within ``--rss-growth`` MiB of
  the start (memory bounded). ``stop``/``lock``/``unlock``/``release`` requests are replaced by ``status``
  (they would legitimately stop or lock the agent and end the run).
* decoder: ``decode_protocol_message`` returns a message or raises ``MalformedMessage``, nothing else.
* bundle: ``verify_bundle`` on a parsed mutant returns the genuine identity or raises a typed
  ``ProtocolError``; if it accepts a mutant, the signed material and identity are unchanged (no forgery).

The same generators drive the hypothesis tests in ``test_fuzz.py`` (CI size) and ``fuzz_atheris.py`` (coverage-
guided, long local runs).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from agent.client import AgentClient
from agent.core.bundle import signature_material, verify_bundle
from agent.core.errors import MalformedMessage, ProtocolError
from agent.core.wire import decode_bundle, decode_protocol_message, encode
from agent.pb.keyagent import agent_pb2 as pb
from backends.memory import MemoryKey
from tests.daemon.agentproc import OWNER_SIGNS, AgentFactory, AgentProc
from tests.proof.common import Peer, rss_kib

__all__ = [
    "FORBIDDEN",
    "LONG_RUN_SKIP",
    "Seeds",
    "FuzzStats",
    "mutate",
    "random_request",
    "make_input",
    "exchange",
    "check_decoder",
    "check_bundle",
    "make_seeds",
    "main",
]

#: Requests that legitimately end or lock the agent: a fuzzer that sends them stops fuzzing.
FORBIDDEN = frozenset({"stop", "lock", "unlock", "release"})
#: Long runs also leave out ``rotate``: every rotation legitimately keeps one more signed prekey for the 7-day
#: grace period (key file and memory grow with it), which would be mistaken for a leak.
LONG_RUN_SKIP = FORBIDDEN | {"rotate"}
_LEN = struct.Struct(">I")
_STATUS = pb.Request(status=pb.StatusRequest()).SerializeToString()


@dataclass
class Seeds:
    """Valid material the mutators start from."""

    requests: list[bytes]  # serialised Request messages, every type
    blobs: list[bytes]  # keys, bundles, ProtocolMessages: values for bytes fields
    messages: list[bytes]  # ProtocolMessage bytes
    bundles: list[bytes]  # signed Bundle bytes
    bundle_identity: bytes = b""


# --- mutation -----------------------------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, splice: Sequence[bytes] = ()) -> bytes:
    """One to four random edits of ``data`` (protobuf-aware only in that it likes small varints)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # bit flip
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # byte replaced by an interesting value
            buf[rng.randrange(len(buf))] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12, 0x1A, 0x22])
        elif op == 2:  # truncate
            del buf[pos:]
        elif op == 3:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and buf:  # delete a range
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 5 and splice:  # splice in part of another seed
            other = rng.choice(splice)
            a = rng.randrange(len(other) + 1)
            buf[pos:pos] = other[a:a + rng.randint(1, 64)]
        elif op == 6:  # an overlong or huge varint (length prefixes, field numbers)
            buf[pos:pos] = rng.choice([b"\xff" * 10, b"\x80" * 11, b"\xff\xff\xff\xff\x0f", b"\x0a\xff\xff\xff\x7f"])
        else:  # duplicate a chunk (repeated fields, last-wins semantics)
            a = rng.randrange(len(buf) + 1)
            buf[pos:pos] = buf[a:a + rng.randint(1, 32)]
    return bytes(buf)


def _random_value(fd: FieldDescriptor, rng: random.Random, seeds: Seeds, depth: int) -> object:
    t = fd.type
    if t == FieldDescriptor.TYPE_BYTES:
        pick = rng.random()
        if pick < 0.35 and seeds.blobs:
            return rng.choice(seeds.blobs)
        if pick < 0.6 and seeds.blobs:
            return mutate(rng.choice(seeds.blobs), rng, seeds.blobs)
        return rng.randbytes(rng.choice([0, 1, 31, 32, 33, 64, 65, rng.randint(0, 300)]))
    if t == FieldDescriptor.TYPE_STRING:
        return rng.choice(["", "none", "0x04" + "ab" * 64, "zQ3" + "x" * 40, "\u00e9\u2603" * rng.randint(0, 9),
                           "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 40)))])
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice(fd.enum_type.values).number
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice([0, 1, 2, 1000, 0xFFFFFFFF, rng.getrandbits(32)])
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice([0, 1, 2**63, 2**64 - 1, rng.getrandbits(64)])
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return rng.choice([0, 1, -1, 2**31 - 1, -(2**31)])
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), time.time_ns()])
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e308, float("inf"), float("nan")])
    raise TypeError(f"no generator for field type {t}")


def _fill(msg: Message, desc: Descriptor, rng: random.Random, seeds: Seeds, depth: int) -> None:
    for fd in desc.fields:
        if rng.random() < 0.3:
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            if fd.message_type.GetOptions().map_entry:
                target = getattr(msg, fd.name)
                for _ in range(rng.randint(0, 3)):
                    key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
                    key = _random_value(key_fd, rng, seeds, depth)
                    if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                        _fill(target[key], value_fd.message_type, rng, seeds, depth + 1)
                    else:
                        target[key] = _random_value(value_fd, rng, seeds, depth)
            elif fd.is_repeated:
                for _ in range(rng.randint(0, 3)):
                    _fill(getattr(msg, fd.name).add(), fd.message_type, rng, seeds, depth + 1)
            else:
                _fill(getattr(msg, fd.name), fd.message_type, rng, seeds, depth + 1)
                getattr(msg, fd.name).SetInParent()
        elif fd.is_repeated:
            getattr(msg, fd.name).extend(_random_value(fd, rng, seeds, depth) for _ in range(rng.randint(0, 4)))
        else:
            setattr(msg, fd.name, _random_value(fd, rng, seeds, depth))


def random_request(rng: random.Random, seeds: Seeds, skip: frozenset[str] = FORBIDDEN) -> bytes:
    """A Request of a random allowed type whose fields hold random, seed or mutated-seed values."""
    oneof = pb.Request.DESCRIPTOR.oneofs_by_name["request"]
    fd = rng.choice([f for f in oneof.fields if f.name not in skip])
    req = pb.Request()
    sub = getattr(req, fd.name)
    sub.SetInParent()
    _fill(sub, fd.message_type, rng, seeds, 1)
    return bytes(req.SerializeToString())


def _defang(body: bytes, skip: frozenset[str] = FORBIDDEN) -> bytes:
    """Replace a body that parses as a skipped request by ``status`` (keeps the agent running)."""
    try:
        kind = pb.Request.FromString(body).WhichOneof("request")
    except Exception:  # noqa: BLE001 - not a Request at all: the agent must cope, send it
        return body
    return _STATUS if kind in skip else body


def make_input(rng: random.Random, seeds: Seeds, max_frame: int, skip: frozenset[str] = FORBIDDEN) -> bytes:
    """The bytes one fuzz connection sends: one to three frames, each a random, mutated or generated body with
    a correct, wrong, zero or oversized length prefix, or raw junk without framing."""
    out = bytearray()
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.random()
        if kind < 0.35:
            body = mutate(rng.choice(seeds.requests), rng, seeds.blobs)
        elif kind < 0.7:
            body = random_request(rng, seeds, skip)
        elif kind < 0.8:
            body = rng.choice(seeds.requests)
        else:
            body = rng.randbytes(rng.randint(0, 200))
        body = _defang(body, skip)
        how = rng.random()
        if how < 0.75:
            out += _LEN.pack(len(body)) + body
        elif how < 0.85:
            out += _LEN.pack(rng.choice([0, max_frame, max_frame + 1, 2**32 - 1, max(0, len(body) - 3),
                                         len(body) + 5])) + body
        elif how < 0.95:
            framed = _LEN.pack(len(body)) + body
            out += framed[:rng.randrange(len(framed) + 1)]  # half a frame, then the connection's write side closes
            break
        else:
            out += rng.randbytes(rng.randint(1, 12))
            break
    return bytes(out)


# --- running inputs -----------------------------------------------------------------------------------------


def exchange(path: str, data: bytes, timeout: float) -> list[pb.Response]:
    """Send ``data`` on a fresh connection, close our write side, read every response frame until EOF.

    Raises ``TimeoutError`` if the agent neither answers nor closes within ``timeout`` (a hang) and
    ``ValueError`` if what it sends is not a sequence of well-formed Response frames.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        s.connect(path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent already closed on an early bad frame: fine, read what it said
        got = bytearray()
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("the agent neither answered nor closed")
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise TimeoutError("the agent neither answered nor closed") from None
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    responses = []
    while got:
        if len(got) < 4:
            raise ValueError("the agent sent a partial frame header")
        (n,) = _LEN.unpack_from(got)
        if n == 0 or len(got) < 4 + n:
            raise ValueError(f"the agent sent a bad frame ({n} bytes announced, {len(got) - 4} present)")
        responses.append(pb.Response.FromString(bytes(got[4:4 + n])))
        del got[:4 + n]
    return responses


def check_decoder(data: bytes) -> None:
    """``decode_protocol_message`` either parses or raises MalformedMessage; a parse re-encodes and re-parses."""
    try:
        msg = decode_protocol_message(data)
    except MalformedMessage:
        return
    again = decode_protocol_message(encode(msg))
    if again != msg:
        raise AssertionError("a decoded ProtocolMessage does not survive re-encoding")


def check_bundle(data: bytes, genuine: bytes, identity: bytes) -> None:
    """Parse and verify a (mutated) bundle: typed errors only, and no forgery (see module docstring)."""
    try:
        bundle = decode_bundle(data)
        got = verify_bundle(bundle)
    except ProtocolError:
        return
    if got != identity:
        raise AssertionError("a mutated bundle verified under another identity")
    if signature_material(bundle) != signature_material(decode_bundle(genuine)) or bytes(bundle.identity) != identity:
        raise AssertionError("a bundle with altered signed content verified")


def make_seeds(agent: AgentProc, peer: Peer) -> Seeds:
    """Valid requests of every type, built from the live agent's and a peer's real keys and messages."""
    with AgentClient(agent.sock) as c:
        me = c.identity().identity_public_key
        my_bundle = c.bundle()
        hello = c.encrypt(peer.identity, b"hello", peer.bundle()).message
    got = peer.mgr.decrypt(me, hello)
    reply = peer.mgr.encrypt(me, b"hi there").message
    stranger = MemoryKey.generate().public_key()
    reqs = [
        pb.Request(identity=pb.IdentityRequest()),
        pb.Request(bundle=pb.BundleRequest()),
        pb.Request(sign=pb.SignRequest(digest=b"\x42" * 32)),
        pb.Request(encrypt=pb.EncryptRequest(peer_identity=peer.identity, payload=b"x" * 40)),
        pb.Request(encrypt=pb.EncryptRequest(peer_identity=stranger, payload=b"y", peer_bundle=peer.bundle())),
        pb.Request(decrypt=pb.DecryptRequest(sender_identity=peer.identity, message=reply)),
        pb.Request(confirm=pb.ConfirmRequest(refs=[got.confirm_ref])),
        pb.Request(add_bundle=pb.AddBundleRequest(bundle=peer.bundle())),
        pb.Request(list_sessions=pb.ListSessionsRequest()),
        pb.Request(status=pb.StatusRequest()),
        pb.Request(rotate=pb.RotateRequest()),
        pb.Request(ecdh=pb.EcdhRequest(peer_public=peer.identity)),
    ]
    blobs = [me, peer.identity, stranger, my_bundle, peer.bundle(), hello, reply, got.confirm_ref, b"\x42" * 32]
    return Seeds([bytes(r.SerializeToString()) for r in reqs], blobs, [hello, reply], [peer.bundle(), my_bundle],
                 bundle_identity=peer.identity)


@dataclass
class FuzzStats:
    inputs: int = 0
    responses: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    rss_start_kib: int = 0
    rss_max_kib: int = 0
    failures: list[str] = field(default_factory=list)


class LiveAgent:
    """A fuzzing target: one agent, one peer, one bystander connection."""

    def __init__(self, config: dict[str, object] | None = None) -> None:
        self.config = {"frame_timeout": 2.0, "max_frame": 65536, **OWNER_SIGNS, **(config or {})}
        self.factory = AgentFactory()
        self.agent = self.factory.new(config=self.config)
        self.agent.start()
        self.peer = Peer(self.factory.root)
        self.seeds = make_seeds(self.agent, self.peer)
        self.bystander = AgentClient(self.agent.sock, timeout=30).connect()
        self.stats = FuzzStats(rss_start_kib=rss_kib(self.agent.pid))
        self.max_frame = int(self.config["max_frame"])  # type: ignore[call-overload]

    def run_one(self, data: bytes, timeout: float = 20.0) -> list[pb.Response]:
        responses = exchange(self.agent.sock, data, timeout)
        self.stats.inputs += 1
        self.stats.responses += len(responses)
        for r in responses:
            if r.WhichOneof("response") == "error":
                name = pb.Error.Code.Name(r.error.code)
                self.stats.errors_by_code[name] = self.stats.errors_by_code.get(name, 0) + 1
        return responses

    def health(self) -> None:
        """The agent is alive, the bystander still gets answers, and memory is tracked."""
        if not self.agent.alive():
            raise AssertionError("the agent died")
        if self.bystander.status().pid != self.agent.pid:
            raise AssertionError("the bystander got a wrong answer")
        self.stats.rss_max_kib = max(self.stats.rss_max_kib, rss_kib(self.agent.pid))

    def close(self) -> None:
        self.bystander.close()
        self.peer.close()
        self.factory.close()


def _run_agent(inputs: int, seed: int, rss_growth_mib: int, report: Callable[[str], None],
               skip: frozenset[str] = LONG_RUN_SKIP) -> FuzzStats:
    rng = random.Random(seed)
    target = LiveAgent()
    try:
        t0 = time.monotonic()
        for i in range(inputs):
            data = make_input(rng, target.seeds, target.max_frame, skip)
            try:
                target.run_one(data)
            except (TimeoutError, ValueError, OSError) as exc:
                target.stats.failures.append(f"input {i} ({data[:64].hex()}...): {type(exc).__name__}: {exc}")
                if len(target.stats.failures) > 20:
                    break
            if i % 200 == 0:
                target.health()
                growth = (target.stats.rss_max_kib - target.stats.rss_start_kib) / 1024
                if growth > rss_growth_mib:
                    target.stats.failures.append(f"agent RSS grew by {growth:.0f} MiB (bound {rss_growth_mib})")
                    break
            if i and i % 10000 == 0:
                report(f"{i} inputs, {i / (time.monotonic() - t0):.0f}/s, RSS "
                       f"{target.stats.rss_max_kib / 1024:.1f} MiB, errors {target.stats.errors_by_code}")
        target.health()
        return target.stats
    finally:
        target.close()


def _run_inprocess(target: str, inputs: int, seed: int, report: Callable[[str], None]) -> FuzzStats:
    rng = random.Random(seed)
    stats = FuzzStats()
    root = AgentFactory()
    try:
        alice, bob = Peer(root.root), Peer(root.root)
        hello = alice.mgr.encrypt(bob.identity, b"hello", bob.bundle()).message
        reply = bob.mgr.encrypt(alice.identity, b"back").message
        genuine = bob.bundle()
        corpus = [hello, reply, genuine, alice.bundle()]
        alice.close()
        bob.close()
        t0 = time.monotonic()
        for i in range(inputs):
            base = rng.choice(corpus) if target == "decoder" else genuine
            data = mutate(base, rng, corpus) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 300))
            try:
                if target == "decoder":
                    check_decoder(data)
                else:
                    check_bundle(data, genuine, bob.identity)
            except Exception as exc:  # noqa: BLE001 - anything untyped is a finding
                stats.failures.append(f"input {i} ({data.hex()}): {type(exc).__name__}: {exc}")
                if len(stats.failures) > 20:
                    break
            stats.inputs += 1
            if i and i % 100000 == 0:
                report(f"{i} inputs, {i / (time.monotonic() - t0):.0f}/s")
        return stats
    finally:
        root.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["agent", "decoder", "bundle"], default="agent")
    ap.add_argument("--inputs", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rss-growth", type=int, default=64, help="MiB the agent's RSS may grow (agent target)")
    ap.add_argument("--allow-rotate", action="store_true", help="also send rotate requests (state grows with "
                                                                 "each: one more kept signed prekey)")
    args = ap.parse_args(argv)
    seed = random.SystemRandom().getrandbits(32) if args.seed is None else args.seed
    print(f"fuzz {args.target}: {args.inputs} inputs, seed {seed}", flush=True)
    t0 = time.monotonic()
    if args.target == "agent":
        stats = _run_agent(args.inputs, seed, args.rss_growth, lambda s: print(s, flush=True),
                           FORBIDDEN if args.allow_rotate else LONG_RUN_SKIP)
    else:
        stats = _run_inprocess(args.target, args.inputs, seed, lambda s: print(s, flush=True))
    took = time.monotonic() - t0
    print(f"{stats.inputs} inputs in {took:.0f} s ({stats.inputs / max(took, 1e-9):.0f}/s); "
          f"{stats.responses} responses; errors by code {stats.errors_by_code}")
    if args.target == "agent":
        print(f"agent RSS {stats.rss_start_kib / 1024:.1f} MiB at start, {stats.rss_max_kib / 1024:.1f} MiB max")
    for f in stats.failures:
        print("FAILURE:", f)
    print("no crash, no hang" if not stats.failures else "FUZZING FOUND PROBLEMS")
    return 0 if not stats.failures else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
