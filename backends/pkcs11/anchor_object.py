"""The rollback anchor's home on a token: one private CKO_DATA object per store (see agent/daemon/rollback.py).

Token quirks (measured on SoftHSM 2.6.1, python-pkcs11 0.7):

* ``C_SetAttributeValue`` on a data object's CKA_VALUE fails with CKR_ATTRIBUTE_READ_ONLY, as on many smartcards,
  so a new value is a new object: it is created *before* the old one is destroyed, and a read takes the highest
  value among the objects with the label. A crash between the two leaves two objects, never none; the next write
  removes the stale one. Cost measured: ~1.8 ms per write (create + destroy), ~80 µs per read.
* CKA_PRIVATE: only a logged-in session sees or changes the object, so another program on the token without the
  PIN can neither read nor reset it.

The functions run on a backend worker with a logged-in session (:mod:`backends.pkcs11.backend`).
"""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, ObjectClass

__all__ = ["anchor_label", "read_anchor", "write_anchor", "MAX_ANCHOR_BYTES"]

#: the anchor's value is a few bytes (agent.daemon.rollback); anything longer is not ours
MAX_ANCHOR_BYTES = 64
_APPLICATION = "keyagent"


def anchor_label(namespace: bytes, name: str) -> str:
    """The object's CKA_LABEL: the identity's token namespace and the store's name, so neither another identity
    on the token nor another store of this identity shares it."""
    return f"keyagent-anchor-{namespace.hex()}-{name}"


def _objects(session: Any, label: str) -> list[Any]:
    return list(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))


def _value(obj: Any) -> bytes | None:
    value = bytes(obj[Attribute.VALUE])
    return value if 0 < len(value) <= MAX_ANCHOR_BYTES else None


def read_anchor(session: Any, label: str) -> bytes | None:
    """The highest value stored under ``label`` (values compare as the byte strings the daemon writes: a
    big-endian epoch first), or None when there is none."""
    values = [v for v in (_value(o) for o in _objects(session, label)) if v is not None]
    return max(values) if values else None


def write_anchor(session: Any, label: str, value: bytes) -> None:
    """Replace the value under ``label``: the new object first, then every older one."""
    if not 0 < len(value) <= MAX_ANCHOR_BYTES:
        raise ValueError("an anchor value is 1 to 64 bytes")
    old = _objects(session, label)
    session.create_object({
        Attribute.CLASS: ObjectClass.DATA,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.LABEL: label,
        Attribute.APPLICATION: _APPLICATION,
        Attribute.VALUE: value,
    })
    for obj in old:
        obj.destroy()
