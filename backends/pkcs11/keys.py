"""Key pairs on the token: how they are named (KeyRef), made, imported, adopted, checked and used (TokenKey).

The functions here run on a worker thread with a session the backend hands them (see
:mod:`backends.pkcs11.backend`); they never connect, log in or lock. Token quirks handled here (measured on
SoftHSM 2.6.1 / p11-kit 0.24, see pkcs11-probe.md):

* SoftHSM returns high S about half the time: S is normalised and V found by recovery on the host.
* An off-curve peer point makes ``C_DeriveKey`` fail with GeneralError: peers are validated on the host first.
* CKA_EC_POINT is a DER OCTET STRING around the point on most modules; a few give the raw point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

import pkcs11.exceptions as px
from asn1crypto.core import OctetString
from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.base import MAX_SPK_VERSION, SignedPrekeyInfo
from backends.errors import (
    BackendConfigError,
    IdentityChanged,
    KeyExists,
    KeyExtractable,
    KeyNotFound,
    MechanismUnsupported,
    TokenError,
)

__all__ = [
    "KeyRef", "identity_key_ref", "spk_key_ref", "SECP256K1_PARAMS", "TokenKey", "KeyRunner", "check_version",
    "find", "read_public", "generate", "import_pair", "adopt_pair", "list_spks", "destroy", "check_protection",
    "check_pair",
]

T = TypeVar("T")

SECP256K1_PARAMS = encode_named_curve_parameters("secp256k1")  # DER OID 1.3.132.0.10
_KIND_IK, _KIND_SPK = 1, 2
HEALTH_DIGEST = keccak256(b"keyagent identity check")


@dataclass(frozen=True)
class KeyRef:
    """How a key pair is found on the token: CKA_ID (and CKA_LABEL when given)."""

    id: bytes
    label: str | None


def identity_key_ref(namespace: bytes) -> KeyRef:
    return KeyRef(namespace + bytes([_KIND_IK]) + b"\0\0\0\0", f"keyagent-ik-{namespace.hex()}")


def spk_key_ref(namespace: bytes, version: int) -> KeyRef:
    return KeyRef(namespace + bytes([_KIND_SPK]) + version.to_bytes(4, "big"), f"keyagent-spk{version}-{namespace.hex()}")


def check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_SPK_VERSION:
        raise ValueError("signed prekey version must be an int in 1..2^32-1")
    return version


# ----- the KeyOps handle ----------------------------------------------------------------------------------------
class UnsupportedAndDropped(MechanismUnsupported):
    """UNSUPPORTED, and the transport is gone with it: a p11-kit 0.24 server ends the connection after refusing
    an ECDH1_DERIVE from a 0.25 client, so the backend reconnects before the next operation (measured)."""


class KeyRunner(Protocol):
    """What a TokenKey needs from its backend: run a call on the private key object, and the token's mechanisms."""

    def run_with_key(self, ref: KeyRef, fn: Callable[[Any], T]) -> T: ...

    def has_mechanism(self, mechanism: Mechanism) -> bool: ...

    def missing_mechanism(self, mechanism: Mechanism) -> str: ...

    def p11kit_ecdh_gap(self) -> str | None: ...


class TokenKey:
    """KeyOps handle for one key pair on the token; the private object is looked up per worker session."""

    __slots__ = ("_backend", "_ref", "_pub")

    def __init__(self, backend: KeyRunner, ref: KeyRef, pub: bytes) -> None:
        self._backend, self._ref, self._pub = backend, ref, pub

    def public_key(self) -> bytes:
        return self._pub

    def sign(self, digest: bytes) -> bytes:
        if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        digest = bytes(digest)
        # Always Mechanism.ECDSA on the host-made Keccak digest: SoftHSM rejects the hash-on-token variants.
        rs = self._backend.run_with_key(self._ref, lambda key: self._sign_raw(key, digest))
        # Low-S and the recovery id are host work, done off the worker thread so the token stays busy.
        return secp256k1.recoverable_from_rs(bytes(rs), digest, self._pub)

    def _sign_raw(self, key: Any, digest: bytes) -> bytes:
        if not self._backend.has_mechanism(Mechanism.ECDSA):
            raise MechanismUnsupported(self._backend.missing_mechanism(Mechanism.ECDSA))
        return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

    def dh(self, peer_public: bytes) -> bytes:
        peer = secp256k1.decompress(peer_public)  # MalformedKey here, not a GeneralError from the token

        def derive(key: Any) -> bytes:
            if not self._backend.has_mechanism(Mechanism.ECDH1_DERIVE):
                # p11-kit 0.24's RPC (p11-kit-client.so) drops ECDH1_DERIVE: its wire format has no
                # CK_ECDH1_DERIVE_PARAMS, so the mechanism is neither listed nor usable (measured). The message
                # names the p11-kit versions of both ends (lib.p11kit_ecdh_gap).
                raise MechanismUnsupported(self._backend.missing_mechanism(Mechanism.ECDH1_DERIVE))
            try:
                secret = key.derive_key(
                    KeyType.GENERIC_SECRET, 256, mechanism=Mechanism.ECDH1_DERIVE,
                    mechanism_param=(KDF.NULL, None, peer),
                    # the shared x must be readable: a session object, not sensitive, destroyed at once below
                    template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},  # store=False: session obj
                )
            except px.DeviceError:
                # A p11-kit 0.25 client lists ECDH1_DERIVE even in front of a 0.24 server, which then answers
                # CKR_DEVICE_ERROR (measured): that is an old server, not a lost token.
                gap = self._backend.p11kit_ecdh_gap()
                if gap is not None:
                    raise UnsupportedAndDropped(gap) from None
                raise
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                secret.destroy()

        x = self._backend.run_with_key(self._ref, derive)
        if len(x) != 32:
            raise TokenError("token returned a shared secret of the wrong length")
        return x

    def __repr__(self) -> str:
        return f"TokenKey(id={self._ref.id.hex()}, pub={self._pub.hex()})"


# ----- key objects (on a worker, with the session the backend hands over) ----------------------------------------
def find(session: Any, ref: KeyRef, cls: ObjectClass) -> Any:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: cls, Attribute.KEY_TYPE: KeyType.EC, Attribute.ID: ref.id}
    if ref.label:
        attrs[Attribute.LABEL] = ref.label
    found = list(session.get_objects(attrs))
    if len(found) > 1:
        raise BackendConfigError(f"{len(found)} keys on the token have id {ref.id.hex()}")
    return found[0] if found else None


def read_public(session: Any, ref: KeyRef, token_label: str) -> bytes:
    pub = find(session, ref, ObjectClass.PUBLIC_KEY)
    if pub is None:
        raise KeyNotFound(f"no public key with id {ref.id.hex()} on token {token_label}")
    return _point33(pub[Attribute.EC_POINT])


def generate(session: Any, ref: KeyRef) -> bytes:
    """Generate a SENSITIVE, non-EXTRACTABLE, TOKEN secp256k1 pair under ``ref``; its public key."""
    s = session
    if find(s, ref, ObjectClass.PRIVATE_KEY) is not None or find(s, ref, ObjectClass.PUBLIC_KEY):
        raise KeyExists(f"a key with id {ref.id.hex()} already exists on the token")
    pub, _priv = s.generate_keypair(
        KeyType.EC, store=True, id=ref.id, label=ref.label or "", mechanism=Mechanism.EC_KEY_PAIR_GEN,
        public_template={Attribute.EC_PARAMS: SECP256K1_PARAMS, Attribute.VERIFY: True, Attribute.TOKEN: True},
        private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                          Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DERIVE: True},
    )
    return _point33(pub[Attribute.EC_POINT])


def import_pair(session: Any, ref: KeyRef, secret: bytes, pub65: bytes) -> bytes:
    """Create the private and public objects of an imported scalar; no half-imported pair is left behind."""
    s = session
    if find(s, ref, ObjectClass.PRIVATE_KEY) is not None:
        raise KeyExists(f"a private key with id {ref.id.hex()} already exists on the token")
    common = {Attribute.KEY_TYPE: KeyType.EC, Attribute.EC_PARAMS: SECP256K1_PARAMS,
              Attribute.TOKEN: True, Attribute.ID: ref.id, Attribute.LABEL: ref.label or ""}
    priv = s.create_object({**common, Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.VALUE: secret,
                            Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                            Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DERIVE: True})
    try:
        s.create_object({**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.VERIFY: True,
                         Attribute.EC_POINT: OctetString(pub65).dump()})
    except BaseException:
        priv.destroy()  # no half-imported pair left behind
        raise
    return secp256k1.compress(pub65)


def adopt_pair(session: Any, key_id: bytes | None, label: str | None, token_label: str,
               allow_extractable: bool) -> tuple[KeyRef, bytes]:
    """Find an existing pair by id (or by its one label), check its protection and that both halves match."""
    s = session
    if key_id is not None:
        ref = KeyRef(key_id, label)
    else:
        found = list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                    Attribute.KEY_TYPE: KeyType.EC, Attribute.LABEL: label or ""}))
        if not found:
            raise KeyNotFound(f"no EC private key labelled {label!r} on token {token_label}")
        if len(found) > 1:
            raise BackendConfigError(f"{len(found)} keys are labelled {label!r}; adopt by id")
        ref = KeyRef(bytes(found[0][Attribute.ID]), label)
    priv = find(s, ref, ObjectClass.PRIVATE_KEY)
    if priv is None:
        raise KeyNotFound(f"no private key with id {ref.id.hex()} on token {token_label}")
    check_protection(priv, "adopted", token_label, allow_extractable)
    pub = read_public(s, ref, token_label)
    # prove the pair belongs together before trusting the public object
    check_pair(priv, pub, "the adopted private and public key objects do not match")
    return ref, pub


def list_spks(session: Any, namespace: bytes) -> list[SignedPrekeyInfo]:
    prefix = namespace + bytes([_KIND_SPK])
    out = []
    for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC})):
        oid = bytes(obj[Attribute.ID])
        if len(oid) == 13 and oid.startswith(prefix):
            out.append(SignedPrekeyInfo(int.from_bytes(oid[9:], "big"), _point33(obj[Attribute.EC_POINT])))
    return sorted(out, key=lambda i: i.version)


def destroy(session: Any, ref: KeyRef, token_label: str) -> None:
    priv = find(session, ref, ObjectClass.PRIVATE_KEY)
    pub = find(session, ref, ObjectClass.PUBLIC_KEY)
    if priv is None and pub is None:
        raise KeyNotFound(f"no key with id {ref.id.hex()} on token {token_label}")
    if priv is not None:
        priv.destroy()  # the private half first: forward secrecy does not wait for the public object
    if pub is not None:
        pub.destroy()


def check_protection(priv: Any, what: str, token_label: str, allow_extractable: bool) -> None:
    if allow_extractable:
        return
    if not priv[Attribute.SENSITIVE] or priv[Attribute.EXTRACTABLE]:
        raise KeyExtractable(
            f"the {what} private key on token {token_label} can leave the token (SENSITIVE=false or "
            "EXTRACTABLE=true); refused unless forced")


def check_pair(priv: Any, pub: bytes, mismatch: str) -> None:
    """A test signature by ``priv`` recovered on the host must give ``pub``; IdentityChanged(mismatch) if not."""
    rs = bytes(priv.sign(HEALTH_DIGEST, mechanism=Mechanism.ECDSA))
    try:
        secp256k1.recoverable_from_rs(rs, HEALTH_DIGEST, pub)
    except ValueError as exc:
        raise IdentityChanged(mismatch) from exc


def _point33(ec_point: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the 65-byte point (some modules give the raw point)."""
    raw = bytes(ec_point)
    if len(raw) != 65:
        try:
            raw = bytes(OctetString.load(raw).native)
        except ValueError as exc:
            raise TokenError("the token's EC_POINT does not parse") from exc
    return secp256k1.compress(raw)


def pub_of(secret: bytes) -> bytes:
    from backends.memory import MemoryKey

    return MemoryKey(secret).public_key()
