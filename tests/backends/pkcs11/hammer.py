"""Subprocess body of the thread hammer (run by test_hammer.py so a crash cannot take pytest down).

Usage: python -m tests.backends.pkcs11.hammer MODULE TOKEN_LABEL PIN HOME THREADS OPS OS_LOCKING WORKERS
Prints one JSON line with per-kind counts; exit code 0 only when every result verified.
"""

from __future__ import annotations

import json
import sys
import threading

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.home import load_config, open_backend, provision_identity
from backends.memory import MemoryKey


def main(argv: list[str]) -> int:
    module, label, pin, home, threads, ops, locking, workers = argv
    provision_identity(home, "pkcs11", module=module, token=label, pin=pin, os_locking=locking == "1")
    cfg = load_config(home)
    cfg["pkcs11"]["workers"] = int(workers)
    backend = open_backend(cfg, home=home, pin_source=lambda what: pin)
    ik = backend.identity()
    counts = {"sign": 0, "dh": 0, "list": 0, "spk": 0, "relock": 0}
    errors: list[str] = []
    mu = threading.Lock()

    def run(tid: int) -> None:
        try:
            for i in range(int(ops)):
                kind = ("sign", "dh", "sign", "dh", "list", "spk")[(i + tid) % 6]
                if tid == 0 and i % 10 == 9:
                    kind = "relock"  # logout + login while the others work: sessions are rebuilt under them
                if kind == "sign":
                    d = keccak256(tid.to_bytes(2, "big"), i.to_bytes(4, "big"))
                    secp256k1.verify(d, ik.sign(d), ik.public_key())
                elif kind == "dh":
                    peer = MemoryKey.generate()
                    if ik.dh(peer.public_key()) != peer.dh(ik.public_key()):
                        raise AssertionError("dh mismatch")
                elif kind == "list":
                    backend.list_signed_prekeys()
                elif kind == "relock":
                    backend.lock()
                    backend.unlock(pin)
                else:
                    version = 1000 + tid * 100000 + i
                    spk = backend.create_signed_prekey(version)
                    d = keccak256(b"spk", version.to_bytes(4, "big"))
                    secp256k1.verify(d, spk.sign(d), spk.public_key())
                    backend.destroy_signed_prekey(version)
                with mu:
                    counts[kind] += 1
        except Exception as exc:  # recorded, the process exits non-zero
            errors.append(f"{type(exc).__name__}: {exc}")

    ts = [threading.Thread(target=run, args=(t,)) for t in range(int(threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    left = [i.version for i in backend.list_signed_prekeys()]
    backend.close()
    print(json.dumps({"counts": counts, "errors": errors, "spks_left": left}))
    return 0 if not errors and left == [1] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
