"""Token selectors: an RFC 7512 ``pkcs11:`` URI, ``serial:XXXX``, ``label:NAME`` or a bare label.

Pure parsing, no PKCS#11 calls, so it is unit-tested on its own. Only the token-identifying path attributes
of RFC 7512 are honoured (token, serial, manufacturer, model, slot-id, slot-description,
slot-manufacturer, library-*); object attributes select keys (``id``, ``object``); query attributes such as
``module-path`` or ``pin-value`` are refused: the module comes from the agent's config only, and a PIN never
sits in a config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = ["TokenSelector", "parse_selector"]

_TOKEN_ATTRS = {"token", "serial", "manufacturer", "model", "slot-id", "slot-description", "slot-manufacturer",
                "library-manufacturer", "library-description", "library-version"}
_OBJECT_ATTRS = {"id", "object", "type"}
_MAX_LEN = 4096


@dataclass(frozen=True)
class TokenSelector:
    """Which token (and optionally which key object) a selector names; None fields match anything."""

    label: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    slot_id: int | None = None
    object_label: str | None = None
    object_id: bytes | None = None

    def matches(self, *, label: str, serial: str, manufacturer: str, model: str, slot_id: int) -> bool:
        """True when every given field equals the token's (PKCS#11 pads with spaces; callers strip)."""
        return (
            (self.label is None or self.label == label)
            and (self.serial is None or self.serial == serial)
            and (self.manufacturer is None or self.manufacturer == manufacturer)
            and (self.model is None or self.model == model)
            and (self.slot_id is None or self.slot_id == slot_id)
        )

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in (("token", self.label), ("serial", self.serial),
                                         ("manufacturer", self.manufacturer), ("model", self.model),
                                         ("slot-id", self.slot_id)) if v is not None]
        return ";".join(parts) or "any token"


def _pct(value: str, what: str) -> bytes:
    # RFC 7512 allows pchar; reject raw characters that must be percent-encoded in a path attribute.
    if any(c in value for c in "?#;/") or any(ord(c) < 0x21 and c != " " for c in value):
        raise ValueError(f"bad character in {what}")
    return unquote_to_bytes(value)


def parse_selector(text: str) -> TokenSelector:
    """Parse a token selector; raises ValueError with a clear reason on anything malformed."""
    if not isinstance(text, str) or not text or len(text) > _MAX_LEN:
        raise ValueError("token selector must be a non-empty string")
    if text.startswith("serial:"):
        serial = text[len("serial:"):]
        if not serial:
            raise ValueError("empty serial")
        return TokenSelector(serial=serial)
    if text.startswith("label:"):
        label = text[len("label:"):]
        if not label:
            raise ValueError("empty label")
        return TokenSelector(label=label)
    if not text.lower().startswith("pkcs11:"):
        return TokenSelector(label=text)
    body = text[len("pkcs11:"):]
    path, _, query = body.partition("?")
    if query:
        raise ValueError("PKCS#11 URI query attributes (module-path, pin-value, ...) are not accepted")
    fields: dict[str, bytes] = {}
    for attr in path.split(";") if path else []:
        name, eq, value = attr.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise ValueError(f"bad PKCS#11 URI attribute {attr!r}")
        if name not in _TOKEN_ATTRS | _OBJECT_ATTRS:
            raise ValueError(f"unknown PKCS#11 URI attribute {name!r}")
        if name in fields:
            raise ValueError(f"PKCS#11 URI attribute {name!r} given twice")
        fields[name] = _pct(value, name)

    def text_of(name: str) -> str | None:
        raw = fields.get(name)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name} is not UTF-8") from exc

    slot_id = None
    if "slot-id" in fields:
        sid = text_of("slot-id") or ""
        if not sid.isdigit() or len(sid) > 20:
            raise ValueError("slot-id must be a decimal number")
        slot_id = int(sid)
    if "type" in fields and fields["type"] not in (b"private", b"public"):
        raise ValueError("type must be private or public")
    return TokenSelector(
        label=text_of("token"),
        serial=text_of("serial"),
        manufacturer=text_of("manufacturer"),
        model=text_of("model"),
        slot_id=slot_id,
        object_label=text_of("object"),
        object_id=fields.get("id"),
    )
