"""Benchmark: an agent holding 100k stored sessions vs one holding 10 — request latency ratio, resident memory.

    .venv/bin/python tests/bench/bench_store_scale.py [--sessions 100000] [--small 10] [--rounds 5] [--n 60]
                                                    [--json FILE]

Two real agents (software backend, durable state) are started on two homes that differ only in the number of
stored sessions: each has one genuine session with an in-process peer, plus clones of that session's record
under random peer identities and installation ids (same state size; written through the store, so sealed
and indexed like real ones). Requests then alternate between the two agents in rounds, so machine load hits
both alike:

* ``encrypt``: encrypt 1 KiB to the genuine peer (a session lookup, one ratchet step, one durable write);
* ``decrypt``: decrypt a fresh 1 KiB message from the peer (+ confirm);
* ``sign``: an identity-key signature (touches no session: the control row).

Printed: p50 latency of each (ms) at both sizes and the ratio big/small (target ≈ 1: state is indexed, no
request scans all sessions); start-to-ready of each agent; the agents' resident memory (VmRSS) after the
requests, against the issue's target of ≤ 100 MB at 100k sessions. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.client import AgentClient  # noqa: E402
from agent.daemon.sessions import SessionManager  # noqa: E402
from agent.daemon.store import InstallationRecord, PutInstallation, PutSession, SessionRecord, Store  # noqa: E402
from tests.daemon.agentproc import OWNER_SIGNS, PASSPHRASE, AgentFactory, AgentProc  # noqa: E402
from tests.proof.common import Peer, home_backend, rss_kib  # noqa: E402

PAYLOAD = os.urandom(1024)
TARGET_RSS_MB = 100.0


def _populate(agent: AgentProc, peer: Peer, total: int) -> float:
    """Give the agent's home one genuine session with ``peer`` and ``total - 1`` clones; return seconds taken."""
    t0 = time.perf_counter()
    backend = home_backend(agent.home, PASSPHRASE)
    store = Store(agent.home / "state.db", backend.identity())
    mgr = SessionManager(backend, store, clock=time.time_ns, rng=os.urandom)
    first = mgr.encrypt(peer.identity, b"hello", peer.bundle()).message
    got = peer.mgr.decrypt(mgr.identity, first)
    peer.mgr.confirm([got.confirm_ref])
    back = peer.mgr.encrypt(mgr.identity, b"back").message
    mgr.confirm([mgr.decrypt(peer.identity, back).confirm_ref])
    mgr.close()  # exact positions written, store closed
    store = Store(agent.home / "state.db", backend.identity())
    (genuine,) = store.load_sessions()
    inst = next(i for i in store.load_installations() if i.identity == peer.identity)
    batch: list[PutSession | PutInstallation] = []
    for _ in range(total - 1):
        ident = b"\x02" + os.urandom(32)
        iid = str(uuid.uuid4())
        rec: SessionRecord = replace(genuine, sid=os.urandom(16), identity=ident, installation_id=iid)
        batch.append(PutSession(rec))
        ins: InstallationRecord = replace(inst, identity=ident, installation_id=iid)
        batch.append(PutInstallation(ins))
        if len(batch) >= 10000:
            store.write(batch)
            batch = []
    if batch:
        store.write(batch)
    store.close()
    backend.close()
    return time.perf_counter() - t0


def _start(agent: AgentProc) -> float:
    t0 = time.perf_counter()
    agent.start()
    return time.perf_counter() - t0


def measure(big: int, small: int, rounds: int, n: int) -> dict[str, object]:
    factory = AgentFactory()
    peers: list[Peer] = []
    try:
        agents = {"small": factory.new(config=OWNER_SIGNS), "big": factory.new(config=OWNER_SIGNS)}
        sizes = {"small": small, "big": big}
        fill: dict[str, float] = {}
        ready: dict[str, float] = {}
        clients: dict[str, AgentClient] = {}
        inbox: dict[str, list[bytes]] = {}
        my_peer: dict[str, Peer] = {}
        for name, agent in agents.items():
            peer = Peer(factory.root)
            peers.append(peer)
            my_peer[name] = peer
            fill[name] = _populate(agent, peer, sizes[name])
            ready[name] = _start(agent)
            clients[name] = AgentClient(agent.sock, timeout=600).connect()
            ident = clients[name].identity().identity_public_key
            inbox[name] = [peer.mgr.encrypt(ident, PAYLOAD).message for _ in range(rounds * n + 10)]
        lat: dict[str, dict[str, list[float]]] = {k: {"encrypt": [], "decrypt": [], "sign": []} for k in agents}
        digest = os.urandom(32)
        for name, c in clients.items():  # warm-up
            for _ in range(5):
                c.encrypt(my_peer[name].identity, PAYLOAD)
                c.confirm([c.decrypt(my_peer[name].identity, inbox[name].pop(0)).confirm_ref])
                c.sign(digest)
        for _ in range(rounds):
            for name, c in clients.items():  # alternate: both sizes see the same machine load
                peer_id = my_peer[name].identity
                for _ in range(n):
                    t0 = time.perf_counter()
                    c.encrypt(peer_id, PAYLOAD)
                    t1 = time.perf_counter()
                    c.confirm([c.decrypt(peer_id, inbox[name].pop(0)).confirm_ref])
                    t2 = time.perf_counter()
                    c.sign(digest)
                    t3 = time.perf_counter()
                    lat[name]["encrypt"].append(t1 - t0)
                    lat[name]["decrypt"].append(t2 - t1)
                    lat[name]["sign"].append(t3 - t2)
        rss = {name: rss_kib(agent.pid) / 1024 for name, agent in agents.items()}
        stored = {name: len(c.list_sessions()) for name, c in clients.items()}
        for c in clients.values():
            c.close()
        p50 = {name: {op: statistics.median(v) * 1e3 for op, v in ops.items()} for name, ops in lat.items()}
        return {
            "sessions": sizes, "stored_sessions_listed": stored, "fill_s": fill, "start_to_ready_s": ready,
            "p50_ms": p50, "ratio_big_over_small": {op: p50["big"][op] / p50["small"][op] for op in p50["big"]},
            "rss_mb": rss, "target_rss_mb": TARGET_RSS_MB, "rss_target_met": rss["big"] <= TARGET_RSS_MB,
            "requests_per_op": rounds * n,
        }
    finally:
        for p in peers:
            p.close()
        factory.close()


def report(res: dict[str, object]) -> str:
    sizes: dict[str, int] = res["sessions"]  # type: ignore[assignment]
    p50: dict[str, dict[str, float]] = res["p50_ms"]  # type: ignore[assignment]
    ratio: dict[str, float] = res["ratio_big_over_small"]  # type: ignore[assignment]
    rss: dict[str, float] = res["rss_mb"]  # type: ignore[assignment]
    ready: dict[str, float] = res["start_to_ready_s"]  # type: ignore[assignment]
    lines = [f"stored sessions: big {sizes['big']}, small {sizes['small']} ({res['requests_per_op']} requests per op "
             f"and size, alternating)",
             f"{'op':<10} {'p50 small ms':>13} {'p50 big ms':>11} {'big/small':>10}"]
    for op in ("encrypt", "decrypt", "sign"):
        lines.append(f"{op:<10} {p50['small'][op]:>13.2f} {p50['big'][op]:>11.2f} {ratio[op]:>10.2f}")
    lines.append(f"start-to-ready: small {ready['small']:.2f} s, big {ready['big']:.2f} s")
    verdict = "met" if res["rss_target_met"] else "NOT met"
    lines.append(f"agent RSS: small {rss['small']:.1f} MB, big {rss['big']:.1f} MB (target <= {TARGET_RSS_MB:.0f} MB "
                 f"at {sizes['big']} sessions: {verdict})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=60, help="requests per op, size and round")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON here (for the report)")
    args = ap.parse_args()
    res = measure(args.sessions, args.small, args.rounds, args.n)
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
