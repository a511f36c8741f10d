"""Benchmark: device and contact requests through a real agent, as ratios to ``status`` in the same run.

    .venv/bin/python tests/bench/bench_devices_contact.py [--n 300]

One software-backend agent (Alice) with two own devices approved and one peer (Bob). Rows: requests per
second and the ratio to the agent's cheapest request (``status``: socket + protobuf round trip), measured
interleaved batch by batch so machine load affects both alike.

* ``devices``: the installation listing.
* ``set_device (approve/disable)``: alternating; each changes our bundle, which is re-signed on the next
  ``bundle`` (the row includes that ``bundle`` call: what a caller who publishes the new bundle pays).
* ``public_message``: an unencrypted 200-byte ProtocolMessage (our cached bundle rides along).
* ``encrypt 200 B to Bob``: for scale: the ratchet path to Bob's installation plus 2 own devices.
* ``decode_card`` (in process, no socket): Base58Check + protobuf + signature recovery of a contact code.

Also printed: contact-code length and QR version for 1 and 3 installations. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.client import AgentClient  # noqa: E402
from agent.daemon.contact_card import decode_card, encode_card  # noqa: E402
from backends.home import provision_identity  # noqa: E402
from tests.daemon.agentproc import PASSPHRASE, AgentFactory  # noqa: E402


def _agent(factory: AgentFactory, name: str, secret: bytes) -> AgentClient:
    home = factory.root / name
    provision_identity(str(home), "software", passphrase=PASSPHRASE, scrypt_n=1 << 12, import_secret=secret)
    proc = factory.new(home=home)
    proc.start()
    return proc.client()


def _rate(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def _qr_version(code: str) -> int:
    import segno

    return int(segno.make(code, error="m", micro=False).version)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    factory = AgentFactory()
    try:
        a = _agent(factory, "a1", b"\xa1" * 32)
        a2 = _agent(factory, "a2", b"\xa1" * 32)
        a3 = _agent(factory, "a3", b"\xa1" * 32)
        b = _agent(factory, "b", b"\xb0" * 32)
        one = encode_card(a.bundle())
        for other in (a2, a3):
            a.add_bundle(other.bundle())
            a.approve_device(other.identity().installation_id)
        three = encode_card(a.bundle())
        bob = b.identity().identity_public_key
        a.add_bundle(b.bundle())
        a2_id = a2.identity().installation_id
        flip = [True]

        def toggle() -> None:
            flip[0] = not flip[0]
            a.set_device(a2_id, flip[0])
            a.bundle()

        payload = b"x" * 200
        rows: dict[str, Callable[[], object]] = {
            "devices": a.devices,
            "set_device (approve/disable) + bundle": toggle,
            "public_message": lambda: a.public_message(payload),
            "encrypt 200 B to Bob": lambda: a.encrypt(bob, payload),
        }
        ratios: dict[str, list[float]] = {k: [] for k in rows}
        rates: dict[str, list[float]] = {k: [] for k in rows}
        base_rates: list[float] = []
        for _ in range(args.rounds):
            for name, fn in rows.items():
                base = _rate(a.status, args.n)
                r = _rate(fn, args.n)
                base_rates.append(base)
                rates[name].append(r)
                ratios[name].append(r / base)
        base = statistics.median(base_rates)
        print(f"status (baseline): {base:8.0f} req/s (median of {len(base_rates)} batches of {args.n})")
        for name in rows:
            print(f"{name:40s} {statistics.median(rates[name]):8.0f} req/s   ratio to status "
                  f"{statistics.median(ratios[name]):.3f} (best {max(ratios[name]):.3f})")
        dec = _rate(lambda: decode_card(three), args.n)
        print(f"{'decode_contact (in process, 3 inst.)':40s} {dec:8.0f} /s      ratio to status {dec / base:.3f}")
        for label, code in (("1 installation", one), ("3 installations", three)):
            print(f"contact code, {label}: {len(code)} characters, QR version {_qr_version(code)} (EC level M)")
        for c in (a, a2, a3, b):
            c.close()
    finally:
        factory.close()


if __name__ == "__main__":
    main()
