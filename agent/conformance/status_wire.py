"""Recognisers for status-go wire values: DH-fallback cases and complete ProtocolMessages.

* DH fallback: an object with ``ephemeral_priv``, ``recipient_identity``, ``nonce`` and ``payload`` (optional
  ``plaintext``, ``key``, ``ephemeral_pub``, ``recipient_priv`` — with the last one the payload is also
  decrypted through a KeyOps, as the daemon does).
* ProtocolMessage: an object with a hex ``protocol_message``: it must parse, re-encode byte for byte
  (deterministic marshal), carry only well-formed header keys, and every attached bundle must verify;
  with ``parts`` (installation id, bundles, per-installation headers and payload) the wire builders must
  produce exactly the recorded bytes.
"""

from __future__ import annotations

from typing import Any

from agent.core import bundle as bnd
from agent.core import fallback, secp256k1, wire
from agent.core.errors import ProtocolError
from agent.core.keys import public_from_secret
from backends.memory import MemoryKey

from .common import Diff, has, hx
from .registry import Case, register


def _fallback(c: dict[str, Any]) -> list[str]:
    d = Diff()
    eph = hx(c["ephemeral_priv"])
    recipient = hx(c["recipient_identity"])
    if "key" in c:
        d.eq("key", c["key"], secp256k1.dh_x(eph, recipient))
    if "plaintext" in c:
        eph_pub, payload = fallback.encrypt(recipient, hx(c["plaintext"]), eph, hx(c["nonce"]))
        d.eq("payload", c["payload"], payload)
        d.opt(c, "ephemeral_pub", eph_pub)
    if "recipient_priv" in c:
        me = MemoryKey(hx(c["recipient_priv"]))
        d.eq("recipient_identity", c["recipient_identity"], me.public_key())
        try:
            pt = fallback.decrypt(me, public_from_secret(eph), hx(c["payload"]))
            d.opt(c, "plaintext", pt)
        except ProtocolError as exc:
            d.fail("payload", f"does not decrypt: {type(exc).__name__}: {exc}")
    d.eq("payload ends with the nonce", c["nonce"], hx(c["payload"])[-12:])
    return d.problems


def _protocol_message(c: dict[str, Any]) -> list[str]:
    d = Diff()
    data = hx(c["protocol_message"])
    try:
        msg = wire.decode_protocol_message(data)
    except ProtocolError as exc:
        return [f"protocol_message: does not parse: {exc}"]
    d.eq("protocol_message (re-encoded)", c["protocol_message"], wire.encode(msg))
    d.opt(c, "installation_id", msg.installation_id)
    for key, entry in msg.encrypted_message.items():
        try:
            wire.check_entry_keys(entry)
        except ProtocolError as exc:
            d.fail(f"encrypted_message[{key!r}]", str(exc))
    for i, b in enumerate(msg.bundles):
        try:
            bnd.verify_bundle(b)
        except ProtocolError as exc:
            d.fail(f"bundles[{i}]", f"does not verify: {type(exc).__name__}: {exc}")
    if isinstance(c.get("parts"), dict):  # the builders must produce exactly the recorded bytes
        d.eq("protocol_message (built from parts)", c["protocol_message"], wire.encode(_build(c["parts"])))
    return d.problems


def _build(parts: dict[str, Any]) -> wire.pb.ProtocolMessage:
    entries = {}
    for key, e in (parts.get("encrypted_message") or {}).items():
        x, r, h = e.get("x3dh_header"), e.get("dr_header"), e.get("dh_header")
        entries[key] = wire.encrypted_message(
            hx(e.get("payload")),
            x3dh=wire.x3dh_header(hx(x["key"]), hx(x["id"])) if x else None,
            dr=wire.dr_header(hx(r["key"]), int(r["n"]), int(r["pn"]), hx(r["id"])) if r else None,
            dh=wire.dh_header(hx(h["key"])) if h else None,
        )
    bundles = [wire.decode_bundle(hx(b)) for b in parts.get("bundles", [])]
    return wire.protocol_message(str(parts.get("installation_id", "")), entries, bundles,
                                 hx(parts.get("public_message")))


@register
def status_wire_cases(node: Any, where: str) -> list[Case] | None:
    """DH-fallback objects and ProtocolMessage objects (see the module docstring)."""
    if has(node, "ephemeral_priv", "recipient_identity", "nonce", "payload"):
        return [Case(where or "dh_fallback", lambda: _fallback(node))]
    if has(node, "protocol_message"):
        return [Case(f"{where or 'protocol_message'} {node.get('name', '')}".rstrip(),
                     lambda: _protocol_message(node))]
    return None
