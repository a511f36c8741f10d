"""Benchmark: Double Ratchet encrypt+decrypt of 1 KiB, in process, against baselines measured in the same run.

Prints messages/second (one encrypt by Alice plus one decrypt by Bob, in order, on a long chain) for:
  * ours, status-go profile (secp256k1, every used key kept until confirmation as status-go does);
  * the bare primitive floor for the same work with ``cryptography`` objects (KDF_CK + HKDF + AES-CTR +
    HMAC on both sides, no state, no checks), and a second floor using the stdlib's one-shot HMAC;
  * PyPI ``doubleratchet`` 1.3.0 (Syndace) configured as close as it allows: X25519, HKDF-SHA-256 root
    KDF with status-go's info string, HMAC chain KDF with the constants 0x0f/0x10, AES-HMAC AEAD with
    SHA-256 and status-go's info string (it only offers AES-CBC, not CTR), MaxSkip 1000.
Targets: ours / floor ≤ 2.0 and ours ≥ 2 × Syndace. Run: ``.venv/bin/python tests/bench/bench_ratchet.py``.
"""

from __future__ import annotations

import asyncio
import hmac as std_hmac
import os
import time
from collections.abc import Callable
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.core.ratchet import STATUS_GO, Ratchet

N = int(os.environ.get("BENCH_N", "4000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
PAYLOAD = os.urandom(1024)
SK = os.urandom(32)
INFO = b"pcwSByyx2CRdryCffXJwy7xgVZWtW5Sh"


def best_rates(fns: list[Callable[[int], None]]) -> list[float]:
    """Messages per second for each fn: best of REPEAT rounds of N messages, the fns interleaved per round
    so that background load hits all of them alike."""
    for fn in fns:
        fn(min(N, 200))  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(REPEAT):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(N)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [N / b for b in best]


def ours(n: int) -> None:
    spk_priv, spk_pub = STATUS_GO.default_keygen()()
    alice = Ratchet.initiator(STATUS_GO, SK, spk_pub)
    bob = Ratchet.responder(STATUS_GO, SK, spk_pub, spk_priv)
    for _ in range(n):
        h, c = alice.encrypt(PAYLOAD)
        if bob.decrypt(h, c) is None:
            raise AssertionError


def ours_split() -> tuple[float, float]:
    """Encrypt-only and decrypt-only rates (messages/s) for the same in-order 1 KiB stream."""
    spk_priv, spk_pub = STATUS_GO.default_keygen()()
    alice = Ratchet.initiator(STATUS_GO, SK, spk_pub)
    bob = Ratchet.responder(STATUS_GO, SK, spk_pub, spk_priv)
    t0 = time.perf_counter()
    msgs = [alice.encrypt(PAYLOAD) for _ in range(N)]
    t1 = time.perf_counter()
    for h, c in msgs:
        bob.decrypt(h, c)
    t2 = time.perf_counter()
    return N / (t1 - t0), N / (t2 - t1)


def _c_hmac(key: bytes, data: bytes) -> bytes:
    h = c_hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _c_side(ck: bytes, data: bytes, ad: bytes, encrypting: bool) -> tuple[bytes, bytes]:
    next_ck, mk = _c_hmac(ck, b"\x0f"), _c_hmac(ck, b"\x10")
    okm = HKDF(hashes.SHA256(), 80, bytes(32), INFO).derive(mk)
    enc, auth, iv = okm[:32], okm[32:64], okm[64:80]
    if encrypting:
        e = Cipher(algorithms.AES(enc), modes.CTR(iv)).encryptor()
        c = iv + e.update(data) + e.finalize()
        return next_ck, c + _c_hmac(auth, ad + c)
    c, tag = data[:-32], data[-32:]
    if not std_hmac.compare_digest(_c_hmac(auth, ad + c), tag):
        raise AssertionError
    d = Cipher(algorithms.AES(enc), modes.CTR(c[:16])).decryptor()
    return next_ck, d.update(c[16:]) + d.finalize()


def floor_cryptography(n: int) -> None:
    cks = ckr = SK
    ad = bytes(41)
    for _ in range(n):
        cks, ct = _c_side(cks, PAYLOAD, ad, True)
        ckr, pt = _c_side(ckr, ct, ad, False)


def _s_hkdf80(mk: bytes) -> bytes:
    prk = std_hmac.digest(bytes(32), mk, sha256)
    t1 = std_hmac.digest(prk, INFO + b"\x01", sha256)
    t2 = std_hmac.digest(prk, t1 + INFO + b"\x02", sha256)
    return t1 + t2 + std_hmac.digest(prk, t2 + INFO + b"\x03", sha256)[:16]


def _s_side(ck: bytes, data: bytes, ad: bytes, encrypting: bool) -> tuple[bytes, bytes]:
    next_ck, mk = std_hmac.digest(ck, b"\x0f", sha256), std_hmac.digest(ck, b"\x10", sha256)
    okm = _s_hkdf80(mk)
    enc, auth, iv = okm[:32], okm[32:64], okm[64:80]
    if encrypting:
        e = Cipher(algorithms.AES(enc), modes.CTR(iv)).encryptor()
        c = iv + e.update(data) + e.finalize()
        return next_ck, c + std_hmac.digest(auth, ad + c, sha256)
    c, tag = data[:-32], data[-32:]
    if not std_hmac.compare_digest(std_hmac.digest(auth, ad + c, sha256), tag):
        raise AssertionError
    d = Cipher(algorithms.AES(enc), modes.CTR(c[:16])).decryptor()
    return next_ck, d.update(c[16:]) + d.finalize()


def floor_stdlib_hmac(n: int) -> None:
    cks = ckr = SK
    ad = bytes(41)
    for _ in range(n):
        cks, ct = _s_side(cks, PAYLOAD, ad, True)
        ckr, pt = _s_side(ckr, ct, ad, False)


def syndace(n: int) -> None:
    from doubleratchet import DoubleRatchet as SyndaceDR
    from doubleratchet.recommended import HashFunction, aead_aes_hmac, kdf_hkdf, kdf_separate_hmacs
    from doubleratchet.recommended.diffie_hellman_ratchet_curve25519 import DiffieHellmanRatchet
    from doubleratchet.types import Header

    class Aead(aead_aes_hmac.AEAD):
        @staticmethod
        def _get_hash_function() -> HashFunction:
            return HashFunction.SHA_256

        @staticmethod
        def _get_info() -> bytes:
            return INFO

    class RootKdf(kdf_hkdf.KDF):
        @staticmethod
        def _get_hash_function() -> HashFunction:
            return HashFunction.SHA_256

        @staticmethod
        def _get_info() -> bytes:
            return b"rsZUpEuXUqqwXBvSy3EcievAh4cMj6QL"

    class ChainKdf(kdf_separate_hmacs.KDF):
        @staticmethod
        def _get_hash_function() -> HashFunction:
            return HashFunction.SHA_256

    class DR(SyndaceDR):
        @staticmethod
        def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
            return (associated_data + header.sending_chain_length.to_bytes(4, "little")
                    + header.previous_sending_chain_length.to_bytes(4, "little") + header.ratchet_pub)

    common = dict(diffie_hellman_ratchet_class=DiffieHellmanRatchet, root_chain_kdf=RootKdf,
                  message_chain_kdf=ChainKdf, message_chain_constant=b"\x0f\x10", dos_protection_threshold=1000,
                  max_num_skipped_message_keys=1000, aead=Aead, shared_secret=SK)

    async def run() -> None:
        bob_priv = DiffieHellmanRatchet._generate_priv()
        bob_pub = DiffieHellmanRatchet._derive_pub(bob_priv)
        alice, first = await DR.encrypt_initial_message(recipient_ratchet_pub=bob_pub, message=PAYLOAD,
                                                        associated_data=b"", **common)  # type: ignore[arg-type]
        bob, _ = await DR.decrypt_initial_message(own_ratchet_priv=bob_priv, message=first, associated_data=b"",
                                                  **common)  # type: ignore[arg-type]
        for _ in range(n):
            msg = await alice.encrypt_message(PAYLOAD, b"")
            await bob.decrypt_message(msg, b"")

    asyncio.run(run())


def main() -> None:
    r_ours, r_floor_c, r_floor_s, r_syn = best_rates([ours, floor_cryptography, floor_stdlib_hmac, syndace])
    print(f"1 KiB encrypt+decrypt, N={N}, best of {REPEAT} (messages/s)")
    enc, dec = ours_split()
    print(f"  ours (status-go profile)             {r_ours:10.0f}   (encrypt only {enc:.0f}/s, decrypt only {dec:.0f}/s)")
    print(f"  floor, cryptography objects          {r_floor_c:10.0f}   floor/ours = {r_floor_c / r_ours:.2f} (target <= 2.0)")
    print(f"  floor, stdlib one-shot HMAC          {r_floor_s:10.0f}   floor/ours = {r_floor_s / r_ours:.2f}")
    print(f"  Syndace doubleratchet 1.3.0          {r_syn:10.0f}   ours/Syndace = {r_ours / r_syn:.2f} (target >= 2.0)")


if __name__ == "__main__":
    main()
