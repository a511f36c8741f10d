"""Benchmark: token-backed Waku opens through the agent vs a raw token ECDH loop, and fairness under a flood.

    .venv/bin/python tests/bench/bench_waku_agent.py [--n 1500] [--rounds 2]

Everything runs on one fresh SoftHSM2 token. Rows (operations per second; ratio against ``raw token ECDH``
measured in the same run, paired batch by batch). The agent path needs the token plus host CPU (event loop,
protobuf, AES/MAC, the client itself): on a box whose cores are busy with other work it falls behind the
single-threaded raw loop, so read the ratios together with the printed load average.

* ``raw token ECDH``: ``Pkcs11Backend.identity().dh(R)`` in a loop in this process, a new peer point each time
  (the ceiling: an asymmetric open is one such ECDH plus host work). A raw batch runs right before every
  agent batch; the ratio of each pair is taken, and the median and best over the rounds are printed.
* ``agent ecdh xK``: the agent's raw ``ecdh`` request (allowed for this run only), K client connections: the
  socket's own cost around one token ECDH.
* ``agent open xK``: ``waku_open`` of signed 200-byte ECIES wires sealed to the agent (ECDH in the token, KDF,
  MAC, AES, signature recovery, protobuf, socket), K connections of this process (K <= the gate's per-client
  share, so no BUSY). Target (issue 6): >= 0.9 of raw.
* ``agent open (not ours) xK``: foreign wires that fail at the MAC (a shared topic's other traffic).

Fairness (twice: the agent as shipped, then the same home restarted with ``KEYAGENT_BENCH_UNGATED=1``, which
opens the gate so token work queues FIFO in the backend): one process floods ``waku_open`` with foreign wires over 12 connections while another client opens
its own messages one at a time. Printed: the normal client's rate alone and under the flood (ratio), its share
of the token's operations during the flood (round-robin between two clients would give ~50 %; FIFO over 13
connections would give ~8 %), and how the flood was answered (DECRYPT_FAILED = token work done, BUSY =
refused at once by the gate). Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.daemon import waku_io  # noqa: E402
from agent.client import AgentClient, AgentError  # noqa: E402
from agent.core import secp256k1  # noqa: E402
from agent.daemon.waku_service import gate_limits  # noqa: E402
from agent.daemon.config import AgentConfig  # noqa: E402
from backends.memory import MemoryKey  # noqa: E402
from backends.pkcs11.backend import Pkcs11Backend  # noqa: E402
from tests.daemon.agentproc import REPO, AgentFactory, AgentProc  # noqa: E402
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken  # noqa: E402

_PROVISION = (
    "import sys\n"
    "from backends.home import provision_identity\n"
    "provision_identity(sys.argv[1], 'pkcs11', module=sys.argv[2], token=sys.argv[3], pin=sys.argv[4])\n"
)

_FLOODER = textwrap.dedent("""
    import collections, json, sys, threading
    from agent.client import AgentClient, AgentError
    sock, wire, conns = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
    codes = collections.Counter()
    stop = threading.Event()
    def run():
        with AgentClient(sock) as c:
            while not stop.is_set():
                try:
                    c.waku_open(wire)
                    codes["OK"] += 1
                except AgentError as e:
                    codes[e.code] += 1
    ts = [threading.Thread(target=run) for _ in range(conns)]
    [t.start() for t in ts]
    print("started", flush=True)
    for line in sys.stdin:
        print(json.dumps(codes), flush=True)
        if line.strip() == "stop":
            break
    stop.set()
    [t.join() for t in ts]
""")


class RawToken:
    """A second identity on the same token, opened once in this process, for the raw ECDH loop."""

    def __init__(self, tok: SoftHSMToken) -> None:
        self.backend = Pkcs11Backend(SOFTHSM_MODULE, tok.label, namespace=os.urandom(8),
                                     pin_source=lambda _: tok.pin)
        self.backend.generate_identity()
        self.ik = self.backend.identity()

    def rate(self, peers: list[bytes]) -> float:
        t0 = time.perf_counter()
        for p in peers:
            self.ik.dh(p)
        return len(peers) / (time.perf_counter() - t0)

    def close(self) -> None:
        self.backend.close()


def parallel_rate(sock: str, k: int, items: list[bytes], op: str) -> tuple[float, dict[str, int]]:
    """K connections share ``items``; each does its slice. Returns (ops/s, error counts)."""
    errors: dict[str, int] = {}
    mu = threading.Lock()
    clients = [AgentClient(sock).connect() for _ in range(k)]
    barrier = threading.Barrier(k + 1)

    def work(c: AgentClient, part: list[bytes]) -> None:
        barrier.wait()
        for item in part:
            try:
                if op == "open":
                    c.waku_open(item)
                else:
                    c.ecdh(item)
            except AgentError as exc:
                with mu:
                    errors[exc.code] = errors.get(exc.code, 0) + 1

    threads = [threading.Thread(target=work, args=(c, items[i::k])) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    rate = len(items) / (time.perf_counter() - t0)
    for c in clients:
        c.close()
    return rate, errors


def fairness(agent: AgentProc, mine: list[bytes], foreign: bytes, conns: int, label: str) -> None:
    with AgentClient(agent.sock) as c:
        t0 = time.perf_counter()
        lat_alone = []
        for w in mine:
            s = time.perf_counter()
            c.waku_open(w)
            lat_alone.append(time.perf_counter() - s)
        alone = len(mine) / (time.perf_counter() - t0)
        flood = subprocess.Popen([sys.executable, "-c", _FLOODER, agent.sock, foreign.hex(), str(conns)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert flood.stdin is not None and flood.stdout is not None
        try:
            assert flood.stdout.readline().strip() == "started"
            time.sleep(0.5)  # let the flood reach steady state
            flood.stdin.write("mark\n")
            flood.stdin.flush()
            before = json.loads(flood.stdout.readline())
            refused = 0
            lat_flood = []
            t0 = time.perf_counter()
            for w in mine:
                s = time.perf_counter()
                try:
                    c.waku_open(w)
                except AgentError as exc:
                    if exc.code != "BUSY":
                        raise
                    refused += 1
                lat_flood.append(time.perf_counter() - s)
            elapsed = time.perf_counter() - t0
            flood.stdin.write("stop\n")
            flood.stdin.flush()
            after = json.loads(flood.stdout.readline())
        finally:
            if flood.poll() is None:
                flood.stdin.close()
            flood.wait(60)
    under = (len(mine) - refused) / elapsed
    flood_token = after.get("DECRYPT_FAILED", 0) - before.get("DECRYPT_FAILED", 0)
    flood_busy = after.get("BUSY", 0) - before.get("BUSY", 0)
    share = (len(mine) - refused) / max(1, len(mine) - refused + flood_token)
    lat_alone.sort()
    lat_flood.sort()

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

    print(f"\nfairness, {label}: one flooding process ({conns} connections, foreign wires) vs one sequential client")
    print(f"  normal client alone        {alone:9.1f} opens/s   p50 {pct(lat_alone, .5):6.2f} ms  "
          f"p99 {pct(lat_alone, .99):6.2f} ms")
    print(f"  normal client under flood  {under:9.1f} opens/s   p50 {pct(lat_flood, .5):6.2f} ms  "
          f"p99 {pct(lat_flood, .99):6.2f} ms   ratio {under / alone:.2f}   refused {refused}")
    print(f"  token operations during the flood: normal {len(mine) - refused}, flood {flood_token} "
          f"-> normal share {share:.1%}")
    print(f"  flood answers in that window: DECRYPT_FAILED {flood_token} ({flood_token / elapsed:.0f}/s), "
          f"BUSY {flood_busy} ({flood_busy / elapsed:.0f}/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fair-n", type=int, default=300)
    ap.add_argument("--flood-conns", type=int, default=12)
    ap.add_argument("--max-k-rows", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args()

    capacity, per_client = gate_limits(AgentConfig().workers)
    ks = [k for k in (1, 2, per_client) if k <= per_client][: args.max_k_rows]
    peers = [secp256k1.decompress(MemoryKey.generate().public_key()) for _ in range(args.n)]
    sender = MemoryKey.generate()
    factory = AgentFactory()
    try:
        with SoftHSMToken() as tok:
            tok.activate()
            home = factory.root / "token-home"
            cp = subprocess.run([sys.executable, "-c", _PROVISION, str(home), tok.module, f"label:{tok.label}",
                                 tok.pin], env=dict(tok.env, PYTHONPATH=str(REPO)), capture_output=True,
                                text=True, timeout=120)
            assert cp.returncode == 0, cp.stderr
            agent = factory.new(home=home)
            agent.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin)
            agent.start("--allow-ecdh", passphrase=None)
            with AgentClient(agent.sock) as c:
                ik = bytes(c.status().identity_public_key)
            payload = os.urandom(200)
            mine = [waku_io.seal(payload, to=ik, signer=sender) for _ in range(args.n)]
            other = MemoryKey.generate().public_key()
            foreign = [waku_io.seal(payload, to=other, signer=sender) for _ in range(args.n)]

            raw = RawToken(tok)
            raw.rate(peers[:50])  # warm up (login, key lookup)
            rows: dict[str, tuple[int, str, list[bytes]]] = {}
            for k in ks:
                rows[f"agent ecdh x{k}"] = (k, "ecdh", peers)
                rows[f"agent open x{k}"] = (k, "open", mine)
                rows[f"agent open (not ours) x{k}"] = (k, "open", foreign)
            raw_rates: list[float] = []
            pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
            errs: dict[str, dict[str, int]] = {}
            for _ in range(args.rounds):  # every row measured right after its own raw batch: drift cancels
                for name, (k, op, items) in rows.items():
                    base_rate = raw.rate(peers)
                    rate, e = parallel_rate(agent.sock, k, items, op)
                    if "not ours" in name:
                        e.pop("DECRYPT_FAILED", None)  # expected: that is what foreign traffic gets
                    if e:
                        errs[name] = e
                    raw_rates.append(base_rate)
                    pairs[name].append((rate, rate / base_rate))
            raw.close()

            print(f"gate: capacity {capacity}, per-client {per_client}, 2 slots; n={args.n} per batch, "
                  f"{args.rounds} rounds; SoftHSM2 token; load average {os.getloadavg()[0]:.1f} "
                  f"on {os.cpu_count()} CPUs")
            print(f"{'row':28s} {'ops/s best':>10s} {'ratio median (paired)':>22s} {'ratio best':>11s}")
            print(f"{'raw token ECDH':28s} {max(raw_rates):10.1f} {1.0:22.2f} {1.0:11.2f}")
            for name, got in pairs.items():
                extra = f"   errors {errs[name]}" if name in errs else ""
                ratios = sorted(r for _, r in got)
                print(f"{name:28s} {max(r for r, _ in got):10.1f} {ratios[len(ratios) // 2]:22.2f} "
                      f"{ratios[-1]:11.2f}{extra}")

            fairness(agent, mine[: args.fair_n], foreign[0], args.flood_conns, "gated (as shipped)")
            agent.kill()
            # the same agent with the gate out of the way (KEYAGENT_BENCH_UNGATED): FIFO in the token backend
            ungated = factory.new(home=home)
            ungated.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin, KEYAGENT_BENCH_UNGATED="1")
            ungated.start(passphrase=None)
            fairness(ungated, mine[: args.fair_n], foreign[0], args.flood_conns, "baseline without the gate")
    finally:
        factory.close()


if __name__ == "__main__":
    main()
