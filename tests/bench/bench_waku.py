"""Benchmark: opening asymmetric Waku payloads vs a raw ECDH loop with the same KeyOps.

Every envelope on a shared (partitioned) topic costs one ECDH with the identity before its MAC can fail, so
the ECDH is the floor; this prints how close ``open`` gets to it (target: ratio >= 0.9 for the token).

    .venv/bin/python tests/bench/bench_waku.py [--n 300] [--rounds 3]

Rows, each as ops/s and the ratio against the raw ``key.dh(R)`` loop of the same key, same R points:
* ``foreign``: open_asymmetric of wires for another key (MAC fails): the flood case.
* ``own``: open_asymmetric of wires for us (MAC ok, AES-CTR decrypt).
* ``own+decode``: open_wire of signed wires for us (adds envelope parsing and host-side signer recovery).
Backends: the in-memory key, and a SoftHSM2 token through the PKCS#11 backend when SoftHSM2 is installed.
Not a test: nothing here asserts; timings live only in this script's output.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.daemon import waku_io  # noqa: E402
from agent.core.errors import DecryptFailed  # noqa: E402
from agent.core.hashing import keccak256  # noqa: E402
from agent.core.keyops import KeyOps  # noqa: E402
from agent.core.waku import open_asymmetric, open_wire  # noqa: E402
from backends.memory import MemoryKey  # noqa: E402


def _paired(base: Callable[[], None], fn: Callable[[], None], n: int, rounds: int, batch: int = 10) -> tuple[float, float]:
    """Ops/s of ``base`` and ``fn``, measured in alternating small batches so load drift hits both alike."""
    t_base = t_fn = 0.0
    for _ in range(rounds):
        for _ in range(max(1, n // batch)):
            t0 = time.perf_counter()
            for _ in range(batch):
                base()
            t1 = time.perf_counter()
            for _ in range(batch):
                fn()
            t2 = time.perf_counter()
            t_base += t1 - t0
            t_fn += t2 - t1
    ops = rounds * max(1, n // batch) * batch
    return ops / t_base, ops / t_fn


def _cycle(items: list[bytes]) -> Callable[[], bytes]:
    state = {"i": 0}

    def nxt() -> bytes:
        i = state["i"]
        state["i"] = (i + 1) % len(items)
        return items[i]

    return nxt


def bench(label: str, key: KeyOps, n: int, rounds: int) -> None:
    other = MemoryKey(keccak256(b"bench/other"))
    signer = MemoryKey(keccak256(b"bench/signer"))
    payload = b"\x42" * 200  # a typical short chat message: one 512-byte envelope
    foreign = [waku_io.seal(payload, to=other.public_key(), signer=signer) for _ in range(64)]
    own = [waku_io.seal(payload, to=key.public_key(), signer=signer) for _ in range(64)]
    rs = [w[:65] for w in foreign]

    next_r, next_f, next_o, next_o2 = _cycle(rs), _cycle(foreign), _cycle(own), _cycle(own)

    def raw() -> None:
        key.dh(next_r())

    def open_foreign() -> None:
        try:
            open_asymmetric(next_f(), key)
        except DecryptFailed:
            return
        raise AssertionError("foreign wire opened")

    def open_own() -> None:
        open_asymmetric(next_o(), key)

    def open_decode() -> None:
        open_wire(next_o2(), me=key)

    for fn in (raw, open_foreign, open_own, open_decode):  # warm-up (token sessions, caches)
        for _ in range(5):
            fn()
    for name, fn in (("foreign", open_foreign), ("own", open_own), ("own+decode", open_decode)):
        base, r = _paired(raw, fn, n, rounds)
        print(f"{label}: {name:<11} {r:9.0f} ops/s ({1e6 / r:7.1f} us/op) vs raw ECDH {base:9.0f} ops/s "
              f"({1e6 / base:7.1f} us/op)  ratio {r / base:.3f}")


@contextmanager
def _token_identity() -> Iterator[KeyOps | None]:
    try:
        from backends.pkcs11.backend import Pkcs11Backend
        from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken
    except ImportError as exc:
        print(f"softhsm2: skipped ({exc})")
        yield None
        return
    if not os.path.exists(SOFTHSM_MODULE):
        print("softhsm2: skipped (module not installed)")
        yield None
        return
    with SoftHSMToken() as tok:
        tok.activate()
        backend = Pkcs11Backend(SOFTHSM_MODULE, tok.label, namespace=os.urandom(8), pin_source=lambda _: tok.pin)
        try:
            backend.generate_identity()
            yield backend.identity()
        finally:
            backend.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="operations per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bench("memory  ", MemoryKey(keccak256(b"bench/me")), args.n * 5, args.rounds)
    with _token_identity() as ik:
        if ik is not None:
            bench("softhsm2", ik, args.n, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
