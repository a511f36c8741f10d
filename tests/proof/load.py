"""Load: many clients × mixed requests (encrypt, decrypt+confirm, sign, bundle) against one real agent.

    .venv/bin/python -m tests.proof.load --clients 64 --requests 1000 [--seed N] [--no-verify]

Each client thread has its own connection and runs a seeded mix: 40 % encrypt to the peer, 25 % decrypt (+
confirm) of a fresh message from the peer, 25 % sign, 9 % bundle, 1 % a deliberately malformed sign (31-byte
digest: the one *expected* error, BAD_REQUEST). Any other error, a lost connection, or a request that does not
come back within ``--stall`` seconds (a deadlock) is a failure. At the end every ciphertext handed out is
checked for a reused (session, chain, n) and, unless ``--no-verify``, decrypted at the peer. Prints p50/p99
latency per request type and overall (a report, not a timed assertion).
"""

from __future__ import annotations

import argparse
import itertools
import math
import queue
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from agent.client import AgentClient, AgentError, AgentUnavailable
from agent.core import secp256k1
from agent.daemon.sessions import DecryptResult
from tests.daemon.agentproc import OWNER_SIGNS, AgentFactory
from tests.proof.common import Peer, PositionLedger, dr_positions, rss_kib

__all__ = ["LoadResult", "run_load", "main", "percentile"]

_MIX = (("encrypt", 0.40), ("decrypt+confirm", 0.25), ("sign", 0.25), ("bundle", 0.09), ("bad_sign", 0.01))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


@dataclass
class LoadResult:
    clients: int
    requests_per_client: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    expected_errors: int = 0
    failures: list[str] = field(default_factory=list)
    handed: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (hand-out order, payload, message)
    wall: float = 0.0
    agent_rss_kib: int = 0
    peer_verified: int = 0
    reuses: int = 0

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def table(self) -> str:
        lines = [f"{self.clients} clients x {self.requests_per_client} requests: {self.completed} answered in "
                 f"{self.wall:.1f} s ({self.completed / max(self.wall, 1e-9):.0f} req/s), "
                 f"{self.expected_errors} expected errors, {len(self.failures)} failures, agent RSS "
                 f"{self.agent_rss_kib / 1024:.1f} MiB",
                 f"{'request':<16} {'count':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"]
        everything: list[float] = []
        for kind in sorted(self.latencies):
            v = self.latencies[kind]
            everything += v
            lines.append(f"{kind:<16} {len(v):>7} {percentile(v, 50) * 1e3:>9.2f} {percentile(v, 99) * 1e3:>9.2f} "
                         f"{max(v) * 1e3:>9.2f}")
        if everything:
            lines.append(f"{'all':<16} {len(everything):>7} {percentile(everything, 50) * 1e3:>9.2f} "
                         f"{percentile(everything, 99) * 1e3:>9.2f} {max(everything) * 1e3:>9.2f}")
        return "\n".join(lines)


def _plan(rng: random.Random, n: int) -> list[str]:
    return rng.choices([k for k, _ in _MIX], weights=[w for _, w in _MIX], k=n)


def _feed(peer: Peer, alice_id: bytes, count: int, out: "queue.Queue[tuple[bytes, bytes]]", threads: int = 8) -> None:
    """The peer writes ``count`` fresh messages to the agent (several threads share its store commits)."""
    counter = iter(range(count))
    mu = threading.Lock()

    def work() -> None:
        while True:
            with mu:
                i = next(counter, None)
            if i is None:
                return
            text = f"peer {i}".encode()
            out.put((text, peer.mgr.encrypt(alice_id, text).message))

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def run_load(clients: int, requests: int, *, seed: int = 1, verify: bool = True, stall: float = 120.0,
             root: Path | None = None) -> LoadResult:
    """Run the load against a fresh agent; failures are listed in the result (empty = no deadlock, no
    unexpected error)."""
    rng = random.Random(seed)
    plans = [_plan(random.Random(rng.getrandbits(64)), requests) for _ in range(clients)]
    factory = AgentFactory()
    # room for every load client plus the set-up/verification connections the agent may not have reaped yet
    agent = factory.new(config={"max_connections": clients + 16, **OWNER_SIGNS})
    peer = Peer(root or factory.root)
    result = LoadResult(clients, requests)
    try:
        agent.start()
        with AgentClient(agent.sock) as c:
            alice_id = c.identity().identity_public_key
            first = c.encrypt(peer.identity, b"hello", peer.bundle()).message
        if not isinstance(peer.mgr.decrypt(alice_id, first), DecryptResult):
            raise RuntimeError("set-up message did not decrypt at the peer")
        inbox: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        _feed(peer, alice_id, sum(p.count("decrypt+confirm") for p in plans), inbox)

        ledger = PositionLedger()
        mu = threading.Lock()
        order = itertools.count()  # next() on it is atomic under the GIL: a global hand-out order
        progress = [0] * clients

        def client(k: int) -> None:
            lat: dict[str, list[float]] = defaultdict(list)
            handed: list[tuple[int, bytes, bytes]] = []
            expected = 0
            try:
                with AgentClient(agent.sock, timeout=stall) as c:
                    for i, kind in enumerate(plans[k]):
                        t0 = time.perf_counter()
                        if kind == "encrypt":
                            payload = f"c{k} m{i}".encode()
                            msg = c.encrypt(peer.identity, payload).message
                            handed.append((next(order), payload, msg))
                        elif kind == "decrypt+confirm":
                            text, message = inbox.get_nowait()
                            got = c.decrypt(peer.identity, message)
                            c.confirm([got.confirm_ref])
                            if got.payload != text:
                                raise AssertionError("decrypted to another payload")
                        elif kind == "sign":
                            digest = bytes([k % 256, i % 256]) * 16
                            if secp256k1.recover(digest, c.sign(digest)) != alice_id:
                                raise AssertionError("signature does not recover to the identity")
                        elif kind == "bundle":
                            c.bundle()
                        else:
                            try:
                                c.sign(b"\x00" * 31)
                            except AgentError as exc:
                                if exc.code != "BAD_REQUEST":
                                    raise
                                expected += 1
                            else:
                                raise AssertionError("a 31-byte digest was signed")
                        lat[kind].append(time.perf_counter() - t0)
                        progress[k] = i + 1
            except (AgentError, AgentUnavailable, AssertionError, OSError, queue.Empty) as exc:
                with mu:
                    result.failures.append(f"client {k} request {progress[k]}: {type(exc).__name__}: {exc}")
            with mu:
                for kind, v in lat.items():
                    result.latencies[kind] += v
                result.handed += handed
                result.expected_errors += expected

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(stall + requests * 1.0)
            if t.is_alive():
                result.failures.append(f"a client is still waiting after {stall + requests:.0f} s: deadlock "
                                       f"(progress {progress})")
                break
        result.wall = time.perf_counter() - t0
        result.agent_rss_kib = rss_kib(agent.pid)
        for _, _, msg in result.handed:
            ledger.add(msg)
        result.reuses = len(ledger.reuses)
        if ledger.reuses:
            result.failures.append(f"{len(ledger.reuses)} (session, chain, n) positions reused")
        if verify:
            # The peer reads them chain by chain (chains in the order they were first handed out), each in
            # position order: clients interleave, and a message left behind on an old chain would otherwise wait
            # behind thousands of newer ones, longer than the peer keeps skipped keys (MaxKeep 3000).
            first_seen: dict[bytes, int] = {}
            keyed = []
            for seq, payload, msg in result.handed:
                (pos, _), = dr_positions(msg)
                first_seen[pos[2]] = min(first_seen.get(pos[2], seq), seq)
                keyed.append((pos[2], pos[3], payload, msg))
            keyed.sort(key=lambda x: (first_seen[x[0]], x[1]))
            reading = [(payload, msg) for _, _, payload, msg in keyed]
            for payload, msg in reading:
                got = peer.mgr.decrypt(alice_id, msg)
                if not isinstance(got, DecryptResult) or got.payload != payload:
                    result.failures.append("a handed-out ciphertext did not decrypt at the peer")
                    break
                peer.mgr.confirm([got.confirm_ref])
                result.peer_verified += 1
        with AgentClient(agent.sock) as c:  # still alive and answering
            c.status()
        return result
    finally:
        peer.close()
        factory.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stall", type=float, default=120.0, help="seconds one request may take before it counts "
                                                               "as a deadlock")
    ap.add_argument("--no-verify", action="store_true", help="skip decrypting every ciphertext at the peer")
    args = ap.parse_args(argv)
    result = run_load(args.clients, args.requests, seed=args.seed, verify=not args.no_verify, stall=args.stall)
    print(result.table())
    if not args.no_verify:
        print(f"peer decrypted {result.peer_verified} of {len(result.handed)} handed-out ciphertexts")
    for f in result.failures:
        print("FAILURE:", f)
    print("no deadlock, no unexpected error" if not result.failures else "LOAD FAILED")
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
