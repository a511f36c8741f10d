"""Hostile local clients: slow-loris, half-open frames, connection floods, idle slot holders.

    .venv/bin/python -m tests.proof.hostile [--seconds 30]

Attackers run in threads against one real agent while a well-behaved client keeps asking for answers (status,
sign, bundle) on its own persistent connection and on fresh connections. This is a liveness check, not a
timed benchmark: every well-behaved request must be answered within a generous bound while the attack runs,
and when the attack stops the agent is back to the well-behaved client's connections only (every hostile
connection was cut or reaped). What each attacker does:

* slow-loris: announce a 1000-byte frame, then dribble one byte every 50 ms (cut by ``frame_timeout``);
* giant claim: announce a frame of exactly ``max_frame`` bytes and never send it (cut by ``frame_timeout``);
* half-open: send part of a header or part of a body, then ``shutdown(SHUT_WR)`` and keep reading (the
  agent sees a truncated frame and closes); or a whole request then ``SHUT_WR`` (it answers, then closes);
* flood: connect and hang up at once, as fast as possible, or send a zero-length frame;
* never-reads: pipeline requests and never read the answers (the agent reads one request at a time and waits,
  bounded, for room to write: it cuts the connection or simply stops reading it; its memory stays bounded);
* idle holders: connections that send nothing and stay open (bounded by ``max_connections``).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.client import AgentClient, AgentError, AgentUnavailable
from agent.pb.keyagent import agent_pb2 as pb
from tests.daemon.agentproc import OWNER_SIGNS, AgentFactory, AgentProc
from tests.proof.common import rss_kib

__all__ = ["HostileResult", "run_hostile", "main", "HOSTILE_CONFIG"]

#: The agent's limits for the run: defaults except a shorter frame timeout, so cut-offs happen within seconds.
HOSTILE_CONFIG = {"frame_timeout": 0.5, "max_frame": 65536, **OWNER_SIGNS}
_STATUS = pb.Request(status=pb.StatusRequest()).SerializeToString()
_BUNDLE = pb.Request(bundle=pb.BundleRequest()).SerializeToString()


@dataclass
class HostileResult:
    probes: int = 0
    fresh_probes: int = 0
    worst_probe: float = 0.0
    cut_by_agent: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    connections_after: int = -1
    rss_start_kib: int = 0
    rss_max_kib: int = 0

    def summary(self) -> str:
        attacks = ", ".join(f"{k}: {self.attempts.get(k, 0)} tries/{self.cut_by_agent.get(k, 0)} cut"
                            for k in sorted(self.attempts))
        return (f"{self.probes} persistent and {self.fresh_probes} fresh-connection requests answered, slowest "
                f"{self.worst_probe * 1e3:.0f} ms; {attacks}; connections after the attack: "
                f"{self.connections_after}; agent RSS {self.rss_start_kib / 1024:.1f} MiB before, "
                f"{self.rss_max_kib / 1024:.1f} MiB max; {len(self.failures)} failures")


def _connect(path: str, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """Read until EOF (True) or ``timeout`` without EOF (False); replies are discarded."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


class _Attacks:
    def __init__(self, agent: AgentProc, result: HostileResult, stop: threading.Event, max_frame: int) -> None:
        self.path = agent.sock
        self.result = result
        self.stop = stop
        self.max_frame = max_frame
        self.mu = threading.Lock()

    def _count(self, kind: str, cut: bool) -> None:
        with self.mu:
            self.result.attempts[kind] = self.result.attempts.get(kind, 0) + 1
            if cut:
                self.result.cut_by_agent[kind] = self.result.cut_by_agent.get(kind, 0) + 1

    def _guard(self, kind: str, fn: Callable[[], bool]) -> None:
        while not self.stop.is_set():
            try:
                cut = fn()
            except OSError:
                cut = True  # refused or reset by the agent: also a cut
            self._count(kind, cut)

    def slow_loris(self) -> None:
        def once() -> bool:
            s = _connect(self.path)
            try:
                s.sendall(struct.pack(">I", 1000))
                while not self.stop.is_set():
                    s.sendall(b"\x00")  # raises once the agent has closed its end
                    if _closed_by_peer(s, 0.05):
                        return True
                return False
            finally:
                s.close()
        self._guard("slow-loris", once)

    def giant_claim(self) -> None:
        def once() -> bool:
            s = _connect(self.path)
            try:
                s.sendall(struct.pack(">I", self.max_frame) + b"\x0a")
                return _closed_by_peer(s, 10.0)
            finally:
                s.close()
        self._guard("giant-claim", once)

    def half_open(self) -> None:
        variants = [b"\x00\x00", struct.pack(">I", 100) + b"\x12\x00", struct.pack(">I", len(_STATUS)) + _STATUS]
        state = {"i": 0}

        def once() -> bool:
            data = variants[state["i"] % len(variants)]
            state["i"] += 1
            s = _connect(self.path)
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                return _closed_by_peer(s, 10.0)
            finally:
                s.close()
        self._guard("half-open", once)

    def flood(self) -> None:
        state = {"i": 0}

        def once() -> bool:
            s = _connect(self.path)
            try:
                state["i"] += 1
                if state["i"] % 2:
                    return True  # hang up at once
                s.sendall(b"\x00\x00\x00\x00")  # zero-length frame: the agent must close
                return _closed_by_peer(s, 10.0)
            finally:
                s.close()
        self._guard("flood", once)

    def never_reads(self) -> None:
        """Pipeline requests whose answers are never read: the agent's writes back up (backpressure)."""
        frame = struct.pack(">I", len(_BUNDLE)) + _BUNDLE

        def once() -> bool:
            s = _connect(self.path)
            try:
                s.settimeout(0.2)
                sent = 0
                deadline = time.monotonic() + 15
                while not self.stop.is_set() and time.monotonic() < deadline:
                    try:
                        s.sendall(frame * 64)
                        sent += 64
                    except socket.timeout:
                        continue  # our send buffer is full too: the agent stopped reading us (one request at a time)
                    except OSError:
                        return True  # the agent cut us off
                return False
            finally:
                s.close()
        self._guard("never-reads", once)

    def idle_holders(self, count: int) -> None:
        held = []
        for _ in range(count):
            try:
                held.append(_connect(self.path))
                self._count("idle-holder", False)
            except OSError:
                self._count("idle-holder", True)
        self.stop.wait()
        for s in held:
            s.close()


def _probe(agent: AgentProc, result: HostileResult, stop: threading.Event, bound: float) -> None:
    """The well-behaved client: a persistent connection, plus fresh connections (retried if refused)."""
    with AgentClient(agent.sock, timeout=bound) as c:
        while not stop.is_set():
            for ask in (c.status, lambda: c.sign(b"\x11" * 32), c.bundle):
                t0 = time.monotonic()
                try:
                    ask()
                except (AgentError, AgentUnavailable, OSError) as exc:
                    result.failures.append(f"well-behaved request failed: {type(exc).__name__}: {exc}")
                    return
                took = time.monotonic() - t0
                result.worst_probe = max(result.worst_probe, took)
                result.probes += 1
                if took > bound:
                    result.failures.append(f"a well-behaved request took {took:.1f} s (bound {bound} s)")
            t0 = time.monotonic()
            while True:  # a fresh connection: with the agent busy cutting attackers it may be refused; retry
                try:
                    with AgentClient(agent.sock, timeout=bound) as fresh:
                        fresh.status()
                    break
                except AgentUnavailable:
                    if time.monotonic() - t0 > bound:
                        result.failures.append(f"no fresh connection was served within {bound} s")
                        return
                    time.sleep(0.05)
            took = time.monotonic() - t0
            result.worst_probe = max(result.worst_probe, took)
            result.fresh_probes += 1
            result.rss_max_kib = max(result.rss_max_kib, rss_kib(agent.pid))
            time.sleep(0.02)


def run_hostile(seconds: float, *, bound: float = 15.0, loris: int = 8, holders: int = 10) -> HostileResult:
    """Attack a fresh agent for ``seconds`` while probing it; the result lists failures (empty = live)."""
    factory = AgentFactory()
    result = HostileResult()
    try:
        agent = factory.new(config=HOSTILE_CONFIG)
        agent.start()
        result.rss_start_kib = result.rss_max_kib = rss_kib(agent.pid)
        stop = threading.Event()
        attacks = _Attacks(agent, result, stop, int(HOSTILE_CONFIG["max_frame"]))
        threads = [threading.Thread(target=attacks.slow_loris, daemon=True) for _ in range(loris)]
        threads += [threading.Thread(target=attacks.giant_claim, daemon=True) for _ in range(2)]
        threads += [threading.Thread(target=attacks.half_open, daemon=True) for _ in range(2)]
        threads += [threading.Thread(target=attacks.flood, daemon=True) for _ in range(2)]
        threads.append(threading.Thread(target=attacks.never_reads, daemon=True))
        threads.append(threading.Thread(target=attacks.idle_holders, args=(holders,), daemon=True))
        for t in threads:
            t.start()
        time.sleep(0.3)  # let the attack build up first
        probe_stop = threading.Event()
        probe = threading.Thread(target=_probe, args=(agent, result, probe_stop, bound), daemon=True)
        probe.start()
        time.sleep(seconds)
        probe_stop.set()
        probe.join(bound * 3)
        if probe.is_alive():
            result.failures.append("the well-behaved client is stuck")
        stop.set()
        for t in threads:
            t.join(15)
        if not agent.alive():
            result.failures.append("the agent died")
            return result
        deadline = time.monotonic() + 10  # the agent notices closed connections asynchronously
        with AgentClient(agent.sock) as c:
            while True:
                result.connections_after = c.status().connections
                if result.connections_after <= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        if result.rss_max_kib - result.rss_start_kib > 64 * 1024:
            result.failures.append(f"agent RSS grew by {(result.rss_max_kib - result.rss_start_kib) / 1024:.0f} MiB")
        if result.connections_after > 1:
            result.failures.append(f"{result.connections_after - 1} hostile connections still held after the attack")
        return result
    finally:
        factory.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--bound", type=float, default=15.0, help="liveness bound per well-behaved request (s)")
    args = ap.parse_args(argv)
    result = run_hostile(args.seconds, bound=args.bound)
    print(result.summary())
    for f in result.failures:
        print("FAILURE:", f)
    print("the agent stayed responsive" if not result.failures else "LIVENESS FAILED")
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
