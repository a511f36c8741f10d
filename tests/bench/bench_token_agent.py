"""Benchmark: token operations through the agent vs raw python-pkcs11 on the same SoftHSM2 token.

    .venv/bin/python tests/bench/bench_token_agent.py [--n 200] [--rounds 3] [--json FILE]

A fresh SoftHSM2 token gets a keyagent identity (``provision_identity``) and a real agent is started on it
(PIN given, ``allow_ecdh`` on so the raw ECDH request is available). In the same run, alternating in rounds:

* ``sign raw``: ``key.sign(digest, mechanism=ECDSA)`` with python-pkcs11 in this process (r‖s only);
* ``sign agent``: the agent's sign request (token ECDSA + low-S + recovery id + socket + audit line);
* ``ecdh raw``: ``ECDH1_DERIVE`` of a session GENERIC_SECRET, read its value, destroy it (python-pkcs11);
* ``ecdh agent``: the agent's ecdh request (the same token work behind the socket).
Rows: ops/s and agent/raw ratio. There is no issue target for this pair; the backend's own target (in-process
backend vs raw, ≥ 0.9) belongs to the backend benchmark. Not a test: nothing asserts. Skips with a message when
SoftHSM2 is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.client import AgentClient  # noqa: E402
from backends.memory import MemoryKey  # noqa: E402
from tests.daemon.agentproc import OWNER_SIGNS, AgentFactory  # noqa: E402
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken  # noqa: E402

_PROVISION = (
    "import sys\n"
    "from backends.home import provision_identity\n"
    "provision_identity(sys.argv[1], 'pkcs11', module=sys.argv[2], token=sys.argv[3], pin=sys.argv[4])\n"
)


def _rate(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def measure(n: int, rounds: int) -> dict[str, float]:
    import pkcs11
    from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass

    factory = AgentFactory()
    try:
        with SoftHSMToken() as tok:
            home = factory.root / "token-home"
            cp = subprocess.run([sys.executable, "-c", _PROVISION, str(home), tok.module, f"label:{tok.label}", tok.pin],
                                env=tok.env, capture_output=True, text=True, timeout=120)
            if cp.returncode != 0:
                raise RuntimeError(cp.stderr)
            config_path = home / "agent.json"
            doc = json.loads(config_path.read_text()) if config_path.exists() else {}
            doc["allow_ecdh"] = True
            doc.update(OWNER_SIGNS)  # "sign agent": raw digest signing is opt-in
            config_path.write_text(json.dumps(doc))
            agent = factory.new(home=home)
            agent.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin)
            agent.start(passphrase=None)

            tok.activate()
            lib = pkcs11.lib(SOFTHSM_MODULE)
            token = lib.get_token(token_label=tok.label)
            peer = MemoryKey.generate().public_key()
            from agent.core import secp256k1

            peer65 = secp256k1.decompress(peer)
            digest = os.urandom(32)
            with token.open(user_pin=tok.pin) as session, AgentClient(agent.sock) as client:
                ident = client.identity().identity_public_key
                keys = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                 Attribute.KEY_TYPE: KeyType.EC}))
                pubs = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                                 Attribute.KEY_TYPE: KeyType.EC}))
                # the identity's private key: the one sharing CKA_ID with the public key whose point is ours
                want_id = None
                for pub in pubs:
                    point = bytes(pub[Attribute.EC_POINT])
                    if point.endswith(secp256k1.decompress(ident)[1:]):
                        want_id = bytes(pub[Attribute.ID])
                key: Any = next(k for k in keys if want_id is None or bytes(k[Attribute.ID]) == want_id)

                def raw_sign() -> object:
                    return key.sign(digest, mechanism=Mechanism.ECDSA)

                def raw_ecdh() -> bytes:
                    secret = key.derive_key(KeyType.GENERIC_SECRET, 256, mechanism=Mechanism.ECDH1_DERIVE,
                                            mechanism_param=(KDF.NULL, None, peer65),
                                            template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True,
                                                      Attribute.TOKEN: False})
                    try:
                        return bytes(secret[Attribute.VALUE])
                    finally:
                        secret.destroy()

                if raw_ecdh() != client.ecdh(peer):
                    raise RuntimeError("the agent's ECDH and the raw token ECDH differ: wrong key picked")
                rows: dict[str, list[float]] = {"sign raw": [], "sign agent": [], "ecdh raw": [], "ecdh agent": []}
                fns: dict[str, Callable[[], object]] = {
                    "sign raw": raw_sign, "sign agent": lambda: client.sign(digest),
                    "ecdh raw": raw_ecdh, "ecdh agent": lambda: client.ecdh(peer),
                }
                for fn in fns.values():
                    _rate(fn, max(5, n // 10))  # warm-up
                for _ in range(rounds):
                    for name, fn in fns.items():
                        rows[name].append(_rate(fn, n))
            agent.kill()
            best = {name: max(v) for name, v in rows.items()}
            best["sign ratio"] = best["sign agent"] / best["sign raw"]
            best["ecdh ratio"] = best["ecdh agent"] / best["ecdh raw"]
            return best
    finally:
        factory.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if not os.path.exists(SOFTHSM_MODULE):
        print("SoftHSM2 is not installed: skipped")
        return
    res = measure(args.n, args.rounds)
    print(f"token ops on SoftHSM2, best of {args.rounds} rounds of {args.n} (ops/s)")
    print(f"{'row':<12} {'ops/s':>8}   ratio agent/raw")
    for op in ("sign", "ecdh"):
        print(f"{op + ' raw':<12} {res[op + ' raw']:>8.0f}")
        print(f"{op + ' agent':<12} {res[op + ' agent']:>8.0f}   {res[op + ' ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
