"""Benchmark: durable session-manager encrypt+decrypt vs the bare in-process ratchet, 1 and 8 threads.

    .venv/bin/python tests/bench/bench_sessions.py [--n 400] [--size 1024]

Rows (messages per second, and the ratio against ``core``, measured in the same run):
* ``core``: Ratchet.encrypt on one side, Ratchet.decrypt on the other, nothing persisted (the ceiling).
* ``fsync``: one SQLite WAL commit with synchronous=FULL per message, nothing else (what a naive store pays).
* ``manager x1``: SessionManager.encrypt -> SessionManager.decrypt -> confirm, every result durable, 1 thread.
* ``manager x8``: the same from 8 threads (8 senders to one receiver), sharing commits (group commit).
The ``commits/msg`` column shows how many fsync'd commits each message cost. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.core.ratchet import STATUS_GO, Ratchet  # noqa: E402
from agent.daemon.sessions import SessionManager  # noqa: E402
from agent.daemon.store import Store  # noqa: E402
from backends.memory import MemoryKey  # noqa: E402
from tests.sessions.harness import MemoryBackend  # noqa: E402


def core_rate(n: int, payload: bytes) -> float:
    bob_spk = MemoryKey.generate()
    sk = os.urandom(32)
    alice = Ratchet.initiator(STATUS_GO, sk, bob_spk.public_key())
    bob = Ratchet.responder(STATUS_GO, sk, bob_spk.public_key(), None)
    t0 = time.perf_counter()
    for _ in range(n):
        h, ct = alice.encrypt(payload)
        bob.decrypt(h, ct, spk=bob_spk)
        bob.delete_message_key(h.dh, h.n)
    return n / (time.perf_counter() - t0)


def fsync_rate(n: int, tmp: Path) -> float:
    c = sqlite3.connect(tmp / "fsync.db", isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
    t0 = time.perf_counter()
    for i in range(n):
        c.execute("BEGIN")
        c.execute("INSERT OR REPLACE INTO t VALUES(?, ?)", (i % 8, os.urandom(300)))
        c.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    c.close()
    return rate


def manager(tmp: Path, name: str, key: MemoryKey) -> SessionManager:
    home = tmp / name
    home.mkdir()
    return SessionManager(MemoryBackend(key), Store(home / "state.db", key), clock=time.time_ns, rng=os.urandom)


def manager_rate(n: int, threads: int, payload: bytes, tmp: Path) -> tuple[float, float]:
    bob = manager(tmp, f"bob{threads}", MemoryKey.generate())
    senders = [manager(tmp, f"a{threads}-{k}", MemoryKey.generate()) for k in range(threads)]
    bundle = bob.our_bundle()
    for s in senders:  # set up the sessions outside the timed part
        res = s.encrypt(bob.identity, b"hello", bundle)
        bob.confirm([bob.decrypt(s.identity, res.message).confirm_ref])
    per = n // threads
    start = threading.Barrier(threads + 1)
    commits0 = bob._store.commits + sum(s._store.commits for s in senders)

    def work(s: SessionManager) -> None:
        start.wait()
        for _ in range(per):
            res = s.encrypt(bob.identity, payload)
            got = bob.decrypt(s.identity, res.message)
            bob.confirm([got.confirm_ref])

    ts = [threading.Thread(target=work, args=(s,)) for s in senders]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    commits = bob._store.commits + sum(s._store.commits for s in senders) - commits0
    return per * threads / elapsed, commits / (per * threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    payload = os.urandom(args.size)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        core = core_rate(args.n, payload)
        print(f"{'row':<12} {'msg/s':>10} {'ratio':>7} {'commits/msg':>12}")
        print(f"{'core':<12} {core:>10.0f} {1.0:>7.2f} {0:>12}")
        fs = fsync_rate(args.n, tmp)
        print(f"{'fsync':<12} {fs:>10.0f} {fs / core:>7.2f} {1:>12}")
        for threads in (1, 8):
            rate, cpm = manager_rate(args.n, threads, payload, tmp)
            print(f"{'manager x' + str(threads):<12} {rate:>10.0f} {rate / core:>7.2f} {cpm:>12.2f}")


if __name__ == "__main__":
    main()
