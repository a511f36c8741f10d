"""Benchmark: Status identity work, each row as a ratio to a baseline measured in the same run.

    .venv/bin/python tests/bench/bench_identity.py [--n 200]

Rows:
* ``derive``: ``derive_identity`` (BIP39 seed + BIP32 to m/43'/60'/1581'/0'/0 and /1'/0 + key UID) against the
  floor of the same phrase's BIP39 seed alone (``hashlib.pbkdf2_hmac`` SHA-512, 2048 rounds), which dominates.
* ``identity req``: an ``identity`` request through a real agent's socket (it reads the home's config.json for
  the key UID and fills the cached contact code) against a ``status`` request on the same connection (answered
  on the event loop) and a ``sign`` request (like identity, run in a worker thread; plus one signature).
* ``contact code``: the first (uncached) contact-code derivation (PBKDF2-SHA256, 65356 rounds) against an
  identity request, to show why the agent caches it.
Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import coincurve  # noqa: E402

from agent.core.identity import contact_code, derive_identity  # noqa: E402
from tests.daemon.agentproc import OWNER_SIGNS, AgentFactory  # noqa: E402

PHRASE = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def per_op(fn: Callable[[], object], n: int, rounds: int = 3) -> float:
    """Best-of-``rounds`` seconds per call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    n = ap.parse_args().n
    warnings.simplefilter("ignore")

    def derive() -> None:
        derive_identity(PHRASE).wipe()

    def seed_only() -> None:
        hashlib.pbkdf2_hmac("sha512", PHRASE.encode(), b"mnemonic", 2048)

    t_seed, t_derive = per_op(seed_only, max(1, n // 4)), per_op(derive, max(1, n // 4))
    rows = [("derive", t_derive, "bip39 seed only", t_seed)]

    factory = AgentFactory()
    try:
        agent = factory.new(config=OWNER_SIGNS)  # the sign row needs raw signing (opt-in)
        agent.start()
        with agent.client() as c:
            t_status = per_op(c.status, n)
            t_ident = per_op(c.identity, n)
            t_sign = per_op(lambda: c.sign(b"\x11" * 32), n)
        rows.append(("identity req", t_ident, "status req", t_status))
        rows.append(("identity req", t_ident, "sign req", t_sign))
    finally:
        factory.close()
    fresh = [coincurve.PrivateKey().public_key.format() for _ in range(5)]
    it = iter(fresh)
    t_cc = per_op(lambda: contact_code(next(it)), 1, rounds=len(fresh) - 1)
    rows.append(("contact code", t_cc, "identity req", t_ident))

    print(f"{'row':<14} {'ms/op':>9}   {'baseline':<16} {'ms/op':>9}   ratio")
    for name, t, base, tb in rows:
        print(f"{name:<14} {t * 1e3:>9.3f}   {base:<16} {tb * 1e3:>9.3f}   {t / tb:6.2f}")


if __name__ == "__main__":
    main()
