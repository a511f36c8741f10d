"""Recognisers for Double Ratchet primitive cases (KDFs, key expansion, payload cipher, headers, DH)."""

from __future__ import annotations

import functools
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.core import drcrypto, secp256k1
from agent.core.errors import DecryptFailed, MalformedKey, ProtocolError
from agent.core.keys import public_from_secret
from agent.core.ratchet import SPEC, STATUS_GO, Header

from .common import Diff, has, hx
from .registry import Case, register


def _kdf_rk(c: dict[str, Any]) -> list[str]:
    d = Diff()
    rk, ck, hk = drcrypto.kdf_rk(hx(c["rk"]), hx(c["dh_out"]))
    d.opt(c, "hkdf_okm96", rk + ck + hk)
    d.opt(c, "new_root_key", rk)
    d.opt(c, "new_rk", rk)
    d.opt(c, "chain_key", ck)
    d.opt(c, "header_key", hk)
    return d.problems


def _kdf_ck(c: dict[str, Any]) -> list[str]:
    d = Diff()
    nxt, mk = drcrypto.kdf_ck(hx(c["ck"]))
    d.eq("next_ck", c["next_ck"], nxt)
    d.eq("mk", c["mk"], mk)
    return d.problems


def _kdf_ck_chain(items: list[dict[str, Any]]) -> list[str]:
    d = Diff()
    for i, c in enumerate(items):
        for p in _kdf_ck(c):
            d.fail(f"[{i}]", p)
        if i and items[i - 1]["next_ck"] != c["ck"]:
            d.fail(f"[{i}].ck", "does not continue the previous next_ck")
        if "n" in c:
            d.eq(f"[{i}].n", items[0].get("n", 0) + i, c["n"])
    return d.problems


def _expand(c: dict[str, Any]) -> list[str]:
    d = Diff()
    enc, auth, iv = drcrypto.expand_message_key(hx(c["mk"]))
    d.opt(c, "hkdf_okm80", enc + auth + iv)
    d.opt(c, "enc_key", enc)
    d.opt(c, "auth_key", auth)
    d.opt(c, "iv", iv)
    return d.problems


def _aead(c: dict[str, Any]) -> list[str]:
    d = Diff()
    mk, pt, ad = hx(c["mk"]), hx(c["plaintext"]), hx(c.get("ad"))
    for p in _expand(c):
        d.problems.append(p)
    ct = drcrypto.encrypt(mk, pt, ad)
    d.eq("ciphertext", c["ciphertext"], ct)
    parts = c.get("ciphertext_parts")
    if isinstance(parts, dict):
        d.opt(parts, "iv", ct[:16], "ciphertext_parts.")
        d.opt(parts, "body", ct[16:-32], "ciphertext_parts.")
        d.opt(parts, "mac", ct[-32:], "ciphertext_parts.")
    try:
        d.eq("decrypt(ciphertext)", c["plaintext"], drcrypto.decrypt(mk, hx(c["ciphertext"]), ad))
    except DecryptFailed as exc:
        d.fail("ciphertext", f"does not decrypt: {exc}")
    kind = c.get("ad_kind")
    if kind in ("nil", "empty") and ad:
        d.fail("ad", f"ad_kind {kind} but ad is not empty")
    if isinstance(kind, str) and kind.startswith("header_only_4"):
        d.eq("ad length", int(kind[len("header_only_"):len("header_only_") + 2]), len(ad))
    return d.problems


def _aead_negative(c: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    d = Diff()
    mk, ct, ad = hx(c["mk"]), hx(c["ciphertext"]), hx(c.get("ad"))
    try:
        pt = drcrypto.decrypt(mk, ct, ad)
        outcome: str | None = None
    except DecryptFailed as exc:
        pt, outcome = b"", str(exc)
    expected = c.get("error")
    if expected is None:
        if outcome is not None:
            d.fail("error", f"expected success, got {outcome!r}")
        elif "plaintext" in c:
            d.eq("plaintext", c["plaintext"], pt)
    elif outcome is None:
        d.fail("error", f"expected {expected!r}, but it decrypted")
    elif not str(expected).startswith("PANIC") and expected != outcome:
        d.fail("error", f"expected {expected!r}, got {outcome!r}")
    # the negatives are single edits of the reference ciphertext: check the edit is what the name says
    name = str(c.get("name", ""))
    if reference is not None and reference is not c and expected is not None:
        ref_ct = hx(reference["ciphertext"])
        if "bitflip" in name:
            bits = sum(bin(a ^ b).count("1") for a, b in zip(ref_ct, ct)) if len(ref_ct) == len(ct) else -1
            d.eq("ciphertext (single bit flipped from the reference)", 1, bits)
            where = name.split("_")[0]
            pos = next((i for i, (a, b) in enumerate(zip(ref_ct, ct)) if a != b), -1)
            region = "iv" if pos < 16 else ("mac" if pos >= len(ct) - 32 else "body")
            if where in ("iv", "body", "mac"):
                d.eq("flipped region", where, region)
        if name.startswith("truncated_to_"):
            d.eq("ciphertext (truncated reference)", ref_ct[: len(ct)], ct)
            digits = "".join(ch for ch in name[len("truncated_to_"):].split("_")[0] if ch.isdigit())
            if digits:
                d.eq("ciphertext length", int(digits), len(ct))
        if name.startswith("only_mac"):
            d.eq("ciphertext (the reference MAC)", ref_ct[-32:], ct)
        if "wrong_mk" not in name:
            d.eq("mk (same as the reference)", reference.get("mk"), c.get("mk"))
        if "wrong_ad" not in name and "ad_nil" not in name:
            d.eq("ad (same as the reference)", reference.get("ad"), c.get("ad"))
        if "wrong_mk" in name or "wrong_ad" in name:
            d.eq("ciphertext (same as the reference)", reference.get("ciphertext"), c.get("ciphertext"))
    return d.problems


def _header(c: dict[str, Any]) -> list[str]:
    d = Diff()
    dh = hx(c["dh"])
    enc = Header(dh, int(c["n"]), int(c["pn"])).encode()
    d.eq("encoded", c["encoded"], enc)
    d.opt(c, "encoded_len", len(enc))
    if "decode" in c:  # the library's Decode() only accepts 40 bytes (never called on status-go's path)
        want = "ok" if len(enc) == 40 else f"error: encoded message header must be 40 bytes, {len(enc)} given"
        d.eq("decode", c["decode"], want)
    return d.problems


def _x25519_pub(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def _x25519_gen(c: dict[str, Any]) -> list[str]:
    d = Diff()
    raw = bytearray(hx(c["random_32"]))
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    d.eq("priv_clamped", c["priv_clamped"], bytes(raw))
    d.eq("pub", c["pub"], _x25519_pub(hx(c["priv_clamped"])))
    return d.problems


def _dh(c: dict[str, Any]) -> list[str]:
    d = Diff()
    priv, pub = hx(c["priv"]), hx(c["remote_pub"])
    profile = SPEC if len(pub) == 32 and "error" not in c else STATUS_GO
    try:
        out: bytes | None = profile.dh(priv, pub)
        err = None
    except (MalformedKey, ProtocolError, ValueError) as exc:
        out, err = None, str(exc)
    if "error" in c and c["error"] is not None:
        if out is not None:
            d.fail("error", f"expected {c['error']!r}, but DH gave {out.hex()}")
    elif err is not None:
        d.fail("out", f"DH failed: {err}")
    else:
        d.eq("out", c["out"], out)
        for k, v in c.items():
            if "expected" in k and isinstance(v, str):
                d.eq(k, v, out)
                if "matches" in c:
                    d.eq("matches", c["matches"], v == c["out"])
        if out is not None and out[:1] == b"\x00":
            d.eq("out length (left-padded)", 32, len(out))
    name = str(c.get("name", ""))
    for size, field in ((32, "remote_pub"), (65, "remote_pub"), (31, "priv")):
        if f"{size} bytes" in name and (field == "priv") == ("priv" in name or "private" in name):
            d.eq(f"{field} length", size, len(hx(c[field])))
    if "uncompressed" in name:  # the point itself is valid: only its 65-byte form is refused
        try:
            secp256k1.public_key(pub)
        except MalformedKey:
            d.fail("remote_pub", "is not a valid uncompressed point")
    return d.problems


def _secp_gen(c: dict[str, Any]) -> list[str]:
    d = Diff()
    priv = hx(c["priv"])
    d.eq("priv length", 32, len(priv))
    if "random_40" in c:  # Go 1.19 ecdsa.GenerateKey: (int(random_40) mod (n-1)) + 1
        r = int.from_bytes(hx(c["random_40"]), "big")
        d.eq("priv", c["priv"], ((r % (secp256k1.CURVE_ORDER - 1)) + 1).to_bytes(32, "big"))
    try:
        d.eq("pub_compressed", c["pub_compressed"], public_from_secret(priv))
    except MalformedKey as exc:
        d.fail("priv", str(exc))
    return d.problems


def _numbered(fn: Any, c: dict[str, Any], index: int) -> list[str]:
    """Run a case check, plus its ``case`` number when recorded (cases are numbered by position)."""
    problems: list[str] = fn(c)
    if "case" in c and c["case"] != index:
        problems.append(f"case: expected {index}, got {c['case']!r}")
    return problems


_SHAPES: list[tuple[tuple[str, ...], tuple[str, ...], Any]] = [
    (("rk", "dh_out"), (), _kdf_rk),
    (("mk", "plaintext", "ciphertext"), (), _aead),
    (("mk", "hkdf_okm80"), (), _expand),
    (("ck", "next_ck", "mk"), (), _kdf_ck),
    (("dh", "n", "pn", "encoded"), (), _header),
    (("random_32", "priv_clamped", "pub"), (), _x25519_gen),
    (("priv", "remote_pub"), (), _dh),
    (("priv", "pub_compressed"), ("pub_uncompressed",), _secp_gen),
]


@register
def dr_primitive_cases(node: Any, where: str) -> list[Case] | None:
    """Lists of primitive cases (each item one case; KDF_CK chains also check their continuity), or one
    primitive case on its own."""
    if isinstance(node, dict):
        for keys, excluded, fn in _SHAPES:
            if has(node, *keys) and not any(e in node for e in excluded):
                return [Case(where or "case", functools.partial(fn, node))]
        return None
    if not (isinstance(node, list) and node and all(isinstance(x, dict) for x in node)):
        return None
    # AEAD decrypt negatives: mk + ciphertext + error, checked against the list's successful reference
    if all(has(x, "mk", "ciphertext", "error") and "plaintext_len" not in x for x in node):
        ref = next((x for x in node if x.get("error") is None), None)
        return [Case(f"{where}[{i}] {x.get('name', '')}".rstrip(), functools.partial(_aead_negative, x, ref))
                for i, x in enumerate(node)]
    if all(has(x, "ck", "next_ck", "mk", "n") for x in node):
        return [Case(f"{where} (chain of {len(node)})", lambda: _kdf_ck_chain(node))]
    for keys, excluded, fn in _SHAPES:
        if all(has(x, *keys) and not any(e in x for e in excluded) for x in node):
            return [Case(f"{where}[{i}]", functools.partial(_numbered, fn, x, i)) for i, x in enumerate(node)]
    return None
