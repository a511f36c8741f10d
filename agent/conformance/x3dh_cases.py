"""Recognisers for X3DH cases (objects with alice/bob identity, ephemeral and signed-prekey keys) and
signed bundle lists (``bundles``-shaped: identity + signed_pre_keys + signature)."""

from __future__ import annotations

import functools
from typing import Any

from agent.core import bundle as bnd
from agent.core import secp256k1, x3dh
from agent.core.errors import ProtocolError
from agent.core.hashing import keccak256
from agent.core import wire
from agent.core.wire import pb
from backends.memory import MemoryKey

from .common import Diff, has, hx
from .registry import Case, register

_ROLES = ("alice_identity", "alice_ephemeral", "bob_identity", "bob_signed_pre_key")


def _check_key(d: Diff, where: str, k: dict[str, Any]) -> MemoryKey:
    key = MemoryKey(hx(k["priv"]))
    d.opt(k, "pub_compressed", key.public_key(), f"{where}.")
    d.opt(k, "pub_uncompressed", secp256k1.decompress(key.public_key()), f"{where}.")
    d.opt(k, "address", secp256k1.address(key.public_key()), f"{where}.")
    return key


def _dh_fields(node: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted((k, v) for k, v in node.items() if k[:3] in ("dh1", "dh2", "dh3"))


def _x3dh(c: dict[str, Any]) -> list[str]:
    d = Diff()
    ik_a, ek_a, ik_b, spk_b = (_check_key(d, r, c[r]) for r in _ROLES)
    sks: list[bytes] = []
    if isinstance(c.get("initiator"), dict):
        dhs = x3dh.initiator_dhs(ik_a, ik_b.public_key(), spk_b.public_key(), hx(c["alice_ephemeral"]["priv"]))
        sk = x3dh.initiate(ik_a, ik_b.public_key(), spk_b.public_key(), hx(c["alice_ephemeral"]["priv"]))
        for (k, v), got in zip(_dh_fields(c["initiator"]), dhs):
            d.eq(f"initiator.{k}", v, got)
        d.opt(c["initiator"], "shared_key", sk, "initiator.")
        d.eq("initiator.shared_key = keccak256(dh1||dh2||dh3)", keccak256(*dhs), sk)
        sks.append(sk)
    if isinstance(c.get("responder"), dict):
        dhs = x3dh.responder_dhs(ik_b, spk_b, ik_a.public_key(), ek_a.public_key())
        sk = x3dh.respond(ik_b, spk_b, ik_a.public_key(), ek_a.public_key())
        for (k, v), got in zip(_dh_fields(c["responder"]), dhs):
            d.eq(f"responder.{k}", v, got)
        d.opt(c["responder"], "shared_key", sk, "responder.")
        sks.append(sk)
    for k, v in c.items():
        if k not in ("initiator", "responder") and "shared_key" in k and isinstance(v, str):
            for sk in sks:
                d.eq(k, v, sk)
    if "matches" in c and sks:
        expected = next((v for k, v in c.items() if k.startswith("expected") and isinstance(v, str)), None)
        if expected is not None:
            d.eq("matches", c["matches"], all(sk.hex() == expected for sk in sks))
    return d.problems


def _bundle(c: dict[str, Any]) -> list[str]:
    d = Diff()
    b = pb.Bundle(identity=hx(c["identity"]), signature=hx(c.get("signature")), timestamp=int(c.get("timestamp", 0)))
    for inst, spk in c["signed_pre_keys"].items():
        e = b.signed_pre_keys[inst]
        e.signed_pre_key = hx(spk["signed_pre_key"])
        e.version = int(spk.get("version", 0))
        e.protocol_version = int(spk.get("protocol_version", 0))
    material = bnd.signature_material(b)
    d.opt(c, "signature_material", material)
    d.opt(c, "keccak256_of_material", keccak256(material))
    if "signature" in c:
        sig = hx(c["signature"])
        if len(sig) == 65:
            d.eq("signature.v in {0,1}", True, sig[64] in (0, 1))
            d.eq("signature low S", True, secp256k1.is_low_s(sig))
    should_fail = c.get("valid") is False or c.get("error") not in (None, "")
    try:
        identity = bnd.verify_bundle(b)
        if should_fail:
            d.fail("valid", f"bundle recorded as invalid ({c.get('error')!r}) but it verifies")
        for k, v in c.items():
            if k.startswith("extract_identity") or k == "recovered_identity":
                d.eq(k, v, identity)
    except ProtocolError as exc:
        if not should_fail:
            d.fail("signature", f"bundle does not verify: {type(exc).__name__}: {exc}")
    for k in ("protobuf", "bundle_protobuf"):
        if k in c:  # deterministic marshal, map keys sorted
            d.eq(k, c[k], wire.encode_bundle(b))
    for k in ("identity_priv", "signer_priv"):
        if k in c:  # with the signer's key, RFC 6979 makes the whole bundle reproducible
            signer = MemoryKey(hx(c[k]))
            spks = {i: (hx(s["signed_pre_key"]), int(s.get("version", 0)), int(s.get("protocol_version", 0)))
                    for i, s in c["signed_pre_keys"].items()}
            d.opt(c, "signature", bnd.sign_bundle(signer, spks, int(c.get("timestamp", 0))).signature)
    return d.problems


def _is_bundle(x: Any) -> bool:
    return has(x, "identity", "signed_pre_keys", "signature")


def _bundles_within(node: Any, where: str) -> list[Case]:
    if _is_bundle(node):
        return [Case(where, functools.partial(_bundle, node))]
    out: list[Case] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _bundles_within(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _bundles_within(v, f"{where}[{i}]")
    return out


@register
def x3dh_cases(node: Any, where: str) -> list[Case] | None:
    """An object with the four X3DH keys is one case; a list of signed bundles is one case per bundle."""
    if has(node, *_ROLES):
        cases = [Case(where or "x3dh", lambda: _x3dh(node))]
        for k, v in node.items():  # bundles kept inside an X3DH case are cases too
            if k not in _ROLES:
                cases += _bundles_within(v, f"{where}.{k}" if where else k)
        return cases
    if isinstance(node, list) and node and all(_is_bundle(x) for x in node):
        return [Case(f"{where}[{i}]", functools.partial(_bundle, x)) for i, x in enumerate(node)]
    if _is_bundle(node):
        return [Case(where or "bundle", lambda: _bundle(node))]
    return None
