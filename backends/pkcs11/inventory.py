"""Read-only PKCS#11 inventory for ``keyagent devices`` and ``keyagent doctor``: slots, tokens, flags, key attributes.

Lives in ``backends/pkcs11/`` because only the backends import python-pkcs11. It never creates, changes or
deletes an object and never logs in unless the caller hands it a PIN; before using a PIN it refuses when the token
reports the PIN locked or on its final try (a doctor must not be what locks a user out). Meant for short-lived CLI
processes: it loads the module with python-pkcs11's per-path cache and does not reinitialise a module the
process already uses, so do not call it inside the daemon while the token worker runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pkcs11
import pkcs11.exceptions as px
from pkcs11 import Attribute, ObjectClass, SlotFlag, TokenFlag

from agent.core.error_codes import ErrorCode
from backends.errors import BackendConfigError, PinFinalTry, PinIncorrect, PinLocked, TokenAbsent
from backends.pkcs11.lib import close_all_sessions, is_pkcs11_module

__all__ = [
    "SECP256K1_OID_DER",
    "ModuleLoadError",
    "TokenInfo",
    "SlotInfo",
    "KeyInfo",
    "KeyInspection",
    "load_module",
    "list_slots",
    "inspect_keys",
]

#: DER of the named-curve OID 1.3.132.0.10 (secp256k1), as CKA_EC_PARAMS holds it.
SECP256K1_OID_DER = bytes.fromhex("06052b8104000a")

_TOKEN_FLAG_NAMES = [f for f in TokenFlag]


class ModuleLoadError(BackendConfigError):
    """The PKCS#11 module file is missing or does not load/initialise: fix the path or install the module."""

    code = ErrorCode.BAD_CONFIG


@dataclass(frozen=True)
class TokenInfo:
    """A token as C_GetTokenInfo reports it (strings stripped of PKCS#11's space padding)."""

    label: str
    serial: str
    manufacturer: str
    model: str
    flags: int

    def has(self, flag: TokenFlag) -> bool:
        return bool(self.flags & int(flag))

    @property
    def flag_names(self) -> list[str]:
        return [f.name or str(int(f)) for f in _TOKEN_FLAG_NAMES if self.flags & int(f)]

    @property
    def pin_count_low(self) -> bool:
        return self.has(TokenFlag.USER_PIN_COUNT_LOW)

    @property
    def pin_final_try(self) -> bool:
        return self.has(TokenFlag.USER_PIN_FINAL_TRY)

    @property
    def pin_locked(self) -> bool:
        return self.has(TokenFlag.USER_PIN_LOCKED)

    @property
    def pin_to_be_changed(self) -> bool:
        return self.has(TokenFlag.USER_PIN_TO_BE_CHANGED)

    @property
    def initialized(self) -> bool:
        return self.has(TokenFlag.TOKEN_INITIALIZED)

    @property
    def user_pin_initialized(self) -> bool:
        return self.has(TokenFlag.USER_PIN_INITIALIZED)

    @property
    def login_required(self) -> bool:
        return self.has(TokenFlag.LOGIN_REQUIRED)

    @property
    def write_protected(self) -> bool:
        return self.has(TokenFlag.WRITE_PROTECTED)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "serial": self.serial, "manufacturer": self.manufacturer, "model": self.model,
                "flags": self.flag_names, "pin_count_low": self.pin_count_low, "pin_final_try": self.pin_final_try,
                "pin_locked": self.pin_locked}


@dataclass(frozen=True)
class SlotInfo:
    """A slot and the token in it (None when the slot is empty)."""

    slot_id: int
    description: str
    manufacturer: str
    flags: int
    token: TokenInfo | None
    token_error: str | None = None  # the slot says a token is present but C_GetTokenInfo failed

    @property
    def removable(self) -> bool:
        return bool(self.flags & int(SlotFlag.REMOVABLE_DEVICE))

    @property
    def hardware(self) -> bool:
        return bool(self.flags & int(SlotFlag.HW_SLOT))

    def to_json(self) -> dict[str, Any]:
        return {"slot_id": self.slot_id, "description": self.description, "manufacturer": self.manufacturer,
                "removable": self.removable, "hardware": self.hardware,
                "token": self.token.to_json() if self.token else None, "token_error": self.token_error}


@dataclass(frozen=True)
class KeyInfo:
    """One key object's identifying and protection attributes (never key material beyond the public point)."""

    object_class: str  # "private" or "public"
    label: str | None
    key_id: bytes
    secp256k1: bool
    public_point: bytes | None = None  # uncompressed 65-byte point, public keys only
    attributes: dict[str, bool] = field(default_factory=dict)  # sensitive, extractable, never_extractable, ...

    @property
    def protected(self) -> bool:
        """True when the private key cannot leave the token (SENSITIVE and not EXTRACTABLE)."""
        return self.attributes.get("sensitive", False) and not self.attributes.get("extractable", True)


@dataclass(frozen=True)
class KeyInspection:
    """What :func:`inspect_keys` saw on one token."""

    token: TokenInfo
    slot_id: int
    logged_in: bool
    public_keys: list[KeyInfo]
    private_keys: list[KeyInfo]


def load_module(module: str) -> Any:
    """The loaded module, or ModuleLoadError/TokenAbsent with a one-line reason."""
    if not os.path.isfile(module):
        raise ModuleLoadError(f"PKCS#11 module {module} does not exist")
    try:
        # dlopen first: python-pkcs11 turns a non-library file into an opaque PKCS11Error.
        if not is_pkcs11_module(module):
            raise ModuleLoadError(f"{module} is a shared library but not a PKCS#11 module (no C_GetFunctionList)")
    except OSError as exc:
        raise ModuleLoadError(f"cannot load PKCS#11 module {module}: {exc}") from None
    try:
        return pkcs11.lib(module)
    except px.PKCS11Error as exc:
        raise TokenAbsent(f"PKCS#11 module {module} does not initialise: {type(exc).__name__}") from None
    except (OSError, RuntimeError) as exc:
        raise ModuleLoadError(f"cannot load PKCS#11 module {module}: {exc}") from None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).rstrip(" \x00").strip()


def _token_info(token: Any) -> TokenInfo:
    return TokenInfo(label=_text(token.label), serial=_text(token.serial), manufacturer=_text(token.manufacturer_id),
                     model=_text(token.model), flags=int(token.flags))


def list_slots(module: str) -> list[SlotInfo]:
    """Every slot of the module (also empty ones), with its token's label, serial and flags."""
    lib = load_module(module)
    try:
        slots = lib.get_slots(token_present=False)
    except px.PKCS11Error as exc:
        raise TokenAbsent(f"C_GetSlotList failed: {type(exc).__name__}") from None
    out: list[SlotInfo] = []
    for slot in slots:
        flags = int(slot.flags)
        token: TokenInfo | None = None
        error: str | None = None
        if flags & int(SlotFlag.TOKEN_PRESENT):
            try:
                token = _token_info(slot.get_token())
            except px.PKCS11Error as exc:
                error = type(exc).__name__
        out.append(SlotInfo(slot_id=int(slot.slot_id), description=_text(slot.slot_description),
                            manufacturer=_text(slot.manufacturer_id), flags=flags, token=token, token_error=error))
    return out


def _bool_attr(obj: Any, attr: Attribute) -> bool | None:
    try:
        return bool(obj[attr])
    except (px.PKCS11Error, KeyError, TypeError):
        return None


def _key_info(obj: Any, cls: str) -> KeyInfo:
    try:
        label: str | None = _text(obj[Attribute.LABEL])
    except (px.PKCS11Error, KeyError):
        label = None
    try:
        key_id = bytes(obj[Attribute.ID])
    except (px.PKCS11Error, KeyError):
        key_id = b""
    try:
        params = bytes(obj[Attribute.EC_PARAMS])
    except (px.PKCS11Error, KeyError):
        params = b""
    point: bytes | None = None
    attrs: dict[str, bool] = {}
    if cls == "public":
        try:
            raw = bytes(obj[Attribute.EC_POINT])
            # CKA_EC_POINT is a DER OCTET STRING (04 41 04...) on SoftHSM/OpenSC; a few modules give the raw point.
            point = raw[2:] if len(raw) == 67 and raw[:2] == b"\x04\x41" else raw
        except (px.PKCS11Error, KeyError):
            point = None
    else:
        for name, attr in (("sensitive", Attribute.SENSITIVE), ("extractable", Attribute.EXTRACTABLE),
                           ("always_sensitive", Attribute.ALWAYS_SENSITIVE),
                           ("never_extractable", Attribute.NEVER_EXTRACTABLE), ("local", Attribute.LOCAL),
                           ("private", Attribute.PRIVATE), ("token", Attribute.TOKEN)):
            value = _bool_attr(obj, attr)
            if value is not None:
                attrs[name] = value
    return KeyInfo(object_class=cls, label=label, key_id=key_id, secp256k1=params == SECP256K1_OID_DER,
                   public_point=point, attributes=attrs)


def inspect_keys(
    module: str,
    *,
    serial: str | None = None,
    label: str | None = None,
    key_id: bytes | None = None,
    key_label: str | None = None,
    pin: str | None = None,
    allow_final_try: bool = False,
) -> KeyInspection:
    """Find the EC keys (optionally one id/label) on the token with this serial or label.

    Without ``pin`` only public objects are visible (private keys are CKA_PRIVATE on every token we know). With a
    PIN it logs in once: PinLocked / PinFinalTry are raised *before* the PIN is sent when the token's flags say
    so; PinIncorrect when the token rejects it. TokenAbsent when no token matches.
    """
    lib = load_module(module)
    try:
        candidates = [s for s in lib.get_slots(token_present=True)]
    except px.PKCS11Error as exc:
        raise TokenAbsent(f"C_GetSlotList failed: {type(exc).__name__}") from None
    chosen: tuple[Any, Any] | None = None
    for slot in candidates:
        try:
            tok = slot.get_token()
        except px.PKCS11Error:
            continue
        info = _token_info(tok)
        if (serial is None or info.serial == serial) and (label is None or info.label == label):
            chosen = (slot, tok)
            break
    if chosen is None:
        what = " ".join(x for x in (f"serial {serial}" if serial else "", f"label {label!r}" if label else "") if x)
        raise TokenAbsent(f"no token with {what or 'any label'} in {module}")
    slot, tok = chosen
    info = _token_info(tok)
    if pin is not None:
        if info.pin_locked:
            raise PinLocked("the token reports the user PIN locked; no PIN was sent")
        if info.pin_final_try and not allow_final_try:
            raise PinFinalTry("the token reports the next wrong PIN locks it; no PIN was sent")
    template: dict[Any, Any] = {}
    if key_id is not None:
        template[Attribute.ID] = key_id
    if key_label is not None:
        template[Attribute.LABEL] = key_label
    try:
        session = tok.open(user_pin=pin) if pin is not None else tok.open()
    except px.PinIncorrect:
        close_all_sessions(lib, int(slot.slot_id))
        raise PinIncorrect("the token rejected the PIN") from None
    except (px.PinLocked, px.PinExpired) as exc:
        close_all_sessions(lib, int(slot.slot_id))
        raise PinLocked(f"the token refused the login: {type(exc).__name__}") from None
    except px.PKCS11Error as exc:
        raise TokenAbsent(f"cannot open a session: {type(exc).__name__}") from None
    try:
        pubs = [_key_info(o, "public") for o in session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, **template})]
        privs = [_key_info(o, "private") for o in session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, **template})]
    except px.PKCS11Error as exc:
        raise TokenAbsent(f"cannot list objects: {type(exc).__name__}") from None
    finally:
        session.close()
    # After a successful login the token clears COUNT_LOW; report the flags as they are now.
    try:
        info = _token_info(slot.get_token())
    except px.PKCS11Error:
        pass
    return KeyInspection(token=info, slot_id=int(slot.slot_id), logged_in=pin is not None, public_keys=pubs,
                         private_keys=privs)
