"""Software fallback backend: the identity and signed prekeys in one encrypted key file, used through coincurve.

File format (JSON, mode 0600, replaced atomically on every change)::

    {"format": "keyagent-keyfile", "version": 1,
     "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": "<b64>"}     # passphrase
         or {"name": "keyring", "service": "keyagent", "username": "<id>", "backend": "<class or null>"},
     "identity_public_key": "<hex33>", "signed_prekeys": {"1": "<hex33>", ...},  # public, readable while locked
     "check": "<hex16>", "nonce": "<b64 12>", "ciphertext": "<b64>"}

The ciphertext is AES-256-GCM over ``{"identity": hex32, "signed_prekeys": {"1": hex32}}`` with every other
field (canonical JSON) as associated data, so a tampered public key or KDF parameter fails authentication.
``check`` is a 16-byte HMAC of a constant under the file key: it tells a wrong passphrase (check differs) from
a corrupt file (check matches, GCM fails) without helping a guesser (the scrypt cost is paid either way).

A keyring-protected file holds a random 32-byte key in the OS keyring (via ``keyring``). On a headless machine
the user names the backend (e.g. ``keyrings.alt.file.PlaintextKeyring``); if no usable keyring exists the
agent raises :class:`KeyringUnavailable` and never writes the key in plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from typing import Any, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from agent.core import secp256k1
from agent.core.keyops import KeyOps
from agent.home_trust import open_nofollow
from backends.base import MAX_SPK_VERSION, BackendStatus, SecretSource, SignedPrekeyInfo
from backends.errors import (
    BackendConfigError,
    KeyExists,
    KeyFileCorrupt,
    KeyNotFound,
    KeyringUnavailable,
    NothingToCheck,
    PassphraseIncorrect,
    PassphraseRequired,
)
from backends.files import write_atomic
from backends.memory import MemoryKey

__all__ = [
    "SoftwareBackend",
    "DEFAULT_SCRYPT_N",
    "keyring_load",
]

FORMAT = "keyagent-keyfile"
FILE_VERSION = 1
#: scrypt N=2^17, r=8, p=1: ~0.5 s and 128 MiB on a 2-core VM (measured), above RFC 7914's interactive 2^14.
DEFAULT_SCRYPT_N = 1 << 17
# Upper bounds on parameters read back from a file, checked before any work, so a tampered header cannot make us
# allocate gigabytes before the passphrase is even tried: scrypt's memory is 128·r·N bytes (capped at 1 GiB, 8x
# the default's 128 MiB), and p multiplies the time only (capped at 4: the default is 1).
_MAX_N, _MAX_R, _MAX_P = 1 << 22, 32, 4
_MAX_SCRYPT_MEMORY = 1 << 30
_MAX_FILE = 1 << 20
_CHECK_LABEL = b"keyagent key-file check v1"
KEYRING_SERVICE = "keyagent"


def keyring_load(backend_name: str | None) -> Any:
    """The keyring to use: the named backend class (``module.Class``), else keyring's own choice.

    Raises KeyringUnavailable when nothing usable exists (keyring's ``fail`` backend, a bad name, an import error).
    """
    try:
        import keyring
        import keyring.backends.fail
        from keyring.core import load_keyring
    except ImportError as exc:  # pragma: no cover - keyring is a hard dependency
        raise KeyringUnavailable("the keyring package is not installed") from exc
    try:
        kr = load_keyring(backend_name) if backend_name else keyring.get_keyring()
    except Exception as exc:  # keyring raises ImportError/AttributeError/ValueError for bad names
        raise KeyringUnavailable(f"cannot load keyring backend {backend_name!r}: {type(exc).__name__}") from exc
    if isinstance(kr, keyring.backends.fail.Keyring):
        raise KeyringUnavailable(
            "no OS keyring is available; install one or name a backend (e.g. keyrings.alt.file.PlaintextKeyring)"
        )
    return kr


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyFileCorrupt(f"key file field {what} is not a string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise KeyFileCorrupt(f"key file field {what} is not base64") from exc


def _unhex(text: Any, what: str, length: int) -> bytes:
    if not isinstance(text, str):
        raise KeyFileCorrupt(f"key file field {what} is not a string")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileCorrupt(f"key file field {what} is not hex") from exc
    if len(raw) != length:
        raise KeyFileCorrupt(f"key file field {what} has the wrong length")
    return raw


def _version_key(text: str) -> int:
    if not text.isdigit() or len(text) > 10:
        raise KeyFileCorrupt("signed prekey version is not a number")
    version = int(text)
    if not 1 <= version <= MAX_SPK_VERSION:
        raise KeyFileCorrupt("signed prekey version out of range")
    return version


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_SPK_VERSION:
        raise ValueError("signed prekey version must be an int in 1..2^32-1")
    return version


class _Header:
    """The public part of a key file, validated; ``aad()`` is what GCM authenticates."""

    def __init__(self, kdf: dict[str, Any], identity_pub: bytes, spk_pubs: dict[int, bytes]) -> None:
        self.kdf = kdf
        self.identity_pub = identity_pub
        self.spk_pubs = spk_pubs

    def aad(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": FILE_VERSION,
            "kdf": self.kdf,
            "identity_public_key": self.identity_pub.hex(),
            "signed_prekeys": {str(v): p.hex() for v, p in sorted(self.spk_pubs.items())},
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, doc: Any) -> "_Header":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeyFileCorrupt("not a keyagent key file")
        if doc.get("version") != FILE_VERSION:
            raise KeyFileCorrupt(f"unsupported key file version {doc.get('version')!r}")
        kdf = doc.get("kdf")
        if not isinstance(kdf, dict):
            raise KeyFileCorrupt("key file has no kdf")
        if kdf.get("name") == "scrypt":
            n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
            for val, hi in ((n, _MAX_N), (r, _MAX_R), (p, _MAX_P)):
                if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= hi:
                    raise KeyFileCorrupt("scrypt parameters out of range")
            assert isinstance(n, int) and isinstance(r, int)
            if n & (n - 1) or n < 2:
                raise KeyFileCorrupt("scrypt N must be a power of two")
            if 128 * r * n > _MAX_SCRYPT_MEMORY:
                raise KeyFileCorrupt(f"scrypt parameters ask for {128 * r * n >> 20} MiB (more than 1 GiB): "
                                     f"not a key file this agent wrote")
            if len(_unb64(kdf.get("salt"), "kdf.salt")) < 16:
                raise KeyFileCorrupt("scrypt salt too short")
            if set(kdf) != {"name", "n", "r", "p", "salt"}:
                raise KeyFileCorrupt("unknown scrypt fields")
        elif kdf.get("name") == "keyring":
            if not isinstance(kdf.get("service"), str) or not isinstance(kdf.get("username"), str):
                raise KeyFileCorrupt("keyring entry name missing")
            if kdf.get("backend") is not None and not isinstance(kdf.get("backend"), str):
                raise KeyFileCorrupt("keyring backend is not a string")
            if set(kdf) != {"name", "service", "username", "backend"}:
                raise KeyFileCorrupt("unknown keyring fields")
        else:
            raise KeyFileCorrupt("unknown key-file kdf")
        identity_pub = _unhex(doc.get("identity_public_key"), "identity_public_key", 33)
        spks = doc.get("signed_prekeys")
        if not isinstance(spks, dict):
            raise KeyFileCorrupt("signed_prekeys is not an object")
        spk_pubs = {_version_key(k): _unhex(v, "signed_prekeys", 33) for k, v in spks.items()}
        return cls(dict(kdf), identity_pub, spk_pubs)


class _SoftKey:
    """KeyOps handle for one key of a SoftwareBackend; resolves the key at each call so lock() takes effect."""

    __slots__ = ("_backend", "_slot", "_pub")

    def __init__(self, backend: "SoftwareBackend", slot: int, pub: bytes) -> None:
        self._backend, self._slot, self._pub = backend, slot, pub

    def public_key(self) -> bytes:
        return self._pub

    def sign(self, digest: bytes) -> bytes:
        if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        return self._backend._key(self._slot, self._pub).sign(bytes(digest))

    def dh(self, peer_public: bytes) -> bytes:
        secp256k1.public_key(peer_public)  # MalformedKey before any unlock prompt
        return self._backend._key(self._slot, self._pub).dh(peer_public)

    def __repr__(self) -> str:
        return f"SoftwareKey(slot={self._slot}, pub={self._pub.hex()})"


_IDENTITY = 0  # slot number of the identity key; SPKs use their version (>= 1)


class SoftwareBackend:
    """Backend over an encrypted key file; thread-safe (one lock around state and file writes).

    Args:
        path: the key file.
        secret_source: asked (once per operation, never retried) for the passphrase when the file is locked.
    """

    kind = "software"

    def __init__(self, path: str, *, secret_source: SecretSource | None = None) -> None:
        self._path = path
        self._source = secret_source
        self._mu = threading.RLock()
        self._keys: dict[int, MemoryKey] | None = None
        self._file_key: bytes | None = None
        self._closed = False
        self._header = self._read_header()
        self._present: tuple[int, bool] = (-1, True)  # (monotonic second, the key file exists): see status()

    # ----- creation -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str,
        *,
        passphrase: str | None = None,
        keyring_backend: str | None = None,
        use_keyring: bool = False,
        identity_secret: bytes | None = None,
        scrypt_n: int = DEFAULT_SCRYPT_N,
        secret_source: SecretSource | None = None,
    ) -> "SoftwareBackend":
        """Write a new key file holding a fresh (or the given) identity key and return the unlocked backend.

        Exactly one protection: ``passphrase`` (scrypt) or ``use_keyring`` (random key in the OS keyring).
        Refuses to overwrite an existing file (KeyExists).
        """
        if os.path.lexists(path):
            raise KeyExists(f"key file {path} already exists")
        if (passphrase is None) == (not use_keyring):
            raise BackendConfigError("choose exactly one of a passphrase or the OS keyring")
        identity = MemoryKey(identity_secret) if identity_secret is not None else MemoryKey.generate()
        if use_keyring:
            kr = keyring_load(keyring_backend)
            file_key = secrets.token_bytes(32)
            username = f"keyfile-{secrets.token_hex(8)}"
            try:
                kr.set_password(KEYRING_SERVICE, username, _b64(file_key))
            except Exception as exc:  # backends raise their own types (incl. EOFError when they prompt)
                raise KeyringUnavailable(f"the keyring refused to store the key: {type(exc).__name__}") from exc
            kdf: dict[str, Any] = {"name": "keyring", "service": KEYRING_SERVICE, "username": username,
                                   "backend": keyring_backend}
        else:
            assert passphrase is not None
            if not passphrase:
                raise BackendConfigError("the passphrase is empty")
            if scrypt_n < 2 or scrypt_n & (scrypt_n - 1) or 128 * 8 * scrypt_n > _MAX_SCRYPT_MEMORY:
                raise BackendConfigError("scrypt N must be a power of two <= 2^20 (1 GiB with r=8)")
            kdf = {"name": "scrypt", "n": scrypt_n, "r": 8, "p": 1, "salt": _b64(secrets.token_bytes(16))}
            file_key = _scrypt(passphrase, kdf)
        header = _Header(kdf, identity.public_key(), {})
        _write_file(path, header, file_key, {_IDENTITY: identity})
        backend = cls(path, secret_source=secret_source)
        with backend._mu:
            backend._file_key, backend._keys = file_key, {_IDENTITY: identity}
        return backend

    # ----- Backend interface ----------------------------------------------------------------------------------
    def identity(self) -> KeyOps:
        return _SoftKey(self, _IDENTITY, self._header.identity_pub)

    def create_signed_prekey(self, version: int) -> KeyOps:
        return self._add_key(_check_version(version), MemoryKey.generate())

    def import_signed_prekey(self, version: int, secret: bytes) -> KeyOps:
        """Store a given SPK scalar (used when importing an identity from elsewhere)."""
        return self._add_key(_check_version(version), MemoryKey(secret))

    def signed_prekey(self, version: int) -> KeyOps:
        _check_version(version)
        with self._mu:
            pub = self._header.spk_pubs.get(version)
        if pub is None:
            raise KeyNotFound(f"signed prekey version {version} does not exist")
        return _SoftKey(self, version, pub)

    def list_signed_prekeys(self) -> list[SignedPrekeyInfo]:
        with self._mu:
            return [SignedPrekeyInfo(v, p) for v, p in sorted(self._header.spk_pubs.items())]

    def destroy_signed_prekey(self, version: int) -> None:
        _check_version(version)
        with self._mu:
            if version not in self._header.spk_pubs:
                raise KeyNotFound(f"signed prekey version {version} does not exist")
            keys = self._unlocked_keys()
            new_keys = {s: k for s, k in keys.items() if s != version}
            new_pubs = {v: p for v, p in self._header.spk_pubs.items() if v != version}
            self._commit(new_pubs, new_keys)

    def status(self) -> BackendStatus:
        """Whether the key file is still there is looked up at most once a second (a stat per status request
        was the largest part of answering one from memory)."""
        with self._mu:
            second = int(time.monotonic())
            if self._present[0] != second:
                self._present = (second, os.path.exists(self._path))
            return BackendStatus(
                kind=self.kind,
                present=self._present[1],
                unlocked=self._keys is not None,
                identity_public_key=self._header.identity_pub,
                detail=self._path,
            )

    #: Keys live in this process: a signature or DH is CPU work here, never a device round trip.
    keys_in_process = True

    def busy(self) -> bool:
        """True while another thread holds the key file (an unlock's KDF): a caller that must not wait asks."""
        if not self._mu.acquire(blocking=False):
            return True
        self._mu.release()
        return False

    def status_nowait(self) -> BackendStatus | None:
        """:meth:`status` if it can be had without waiting (None while an unlock's KDF holds the key file)."""
        if not self._mu.acquire(blocking=False):
            return None
        try:
            return self.status()
        finally:
            self._mu.release()

    def release(self) -> None:
        """Nothing to release: a key file holds no device other programs could wait for."""

    def lock(self) -> None:
        with self._mu:
            self._keys = None
            self._file_key = None

    def unlock(self, secret: str, *, force: bool = False) -> None:
        """Decrypt the key file with ``secret`` (passphrase; ignored for keyring files). ``force`` is unused.

        A keyring file that is already unlocked refuses: it has no passphrase the secret could be checked
        against, and answering "unlocked" would tell the user a mistyped secret was right."""
        with self._mu:
            self._ensure_open()
            header = self._read_header()  # the file on disk is the truth
            if header.kdf["name"] == "keyring" and self._keys is not None:
                raise NothingToCheck("the agent is already unlocked and its key file is protected by the OS "
                                     "keyring, which has no passphrase to check: nothing was changed")
            file_key = self._derive(header, secret)
            keys = _decrypt(self._path, header, file_key)
            self._header, self._file_key, self._keys = header, file_key, keys

    def close(self) -> None:
        with self._mu:
            self.lock()
            self._closed = True

    # ----- software-only ------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def protection(self) -> str:
        """"scrypt" or "keyring"."""
        return str(self._header.kdf["name"])

    def export_secrets(self) -> tuple[bytes, dict[int, bytes]]:
        """Identity and SPK scalars, for ``keyagent migrate`` only (unlocks through the secret source)."""
        with self._mu:
            keys = self._unlocked_keys()
            return keys[_IDENTITY].secret_for_export(), {
                v: k.secret_for_export() for v, k in keys.items() if v != _IDENTITY
            }

    # ----- internals ------------------------------------------------------------------------------------------
    def _ensure_open(self) -> None:
        if self._closed:
            raise BackendConfigError("backend is closed")

    def _read_header(self) -> _Header:
        try:
            with open(open_nofollow(self._path, os.O_RDONLY), "rb") as fh:  # the key file is trusted: no links
                raw = fh.read(_MAX_FILE + 1)
        except FileNotFoundError as exc:
            raise BackendConfigError(f"key file {self._path} does not exist") from exc
        if len(raw) > _MAX_FILE:
            raise KeyFileCorrupt("key file is too large")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyFileCorrupt("key file is not JSON") from exc
        header = _Header.parse(doc)
        for name in ("check", "nonce", "ciphertext"):
            if not isinstance(doc.get(name), str):
                raise KeyFileCorrupt(f"key file has no {name}")
        return header

    def _derive(self, header: _Header, secret: str | None) -> bytes:
        if header.kdf["name"] == "keyring":
            kr = keyring_load(header.kdf["backend"])
            try:
                stored = kr.get_password(header.kdf["service"], header.kdf["username"])
            except Exception as exc:
                raise KeyringUnavailable(f"the keyring refused to give the key: {type(exc).__name__}") from exc
            if stored is None:
                raise KeyringUnavailable("the key-file key is not in this keyring")
            try:
                key = base64.b64decode(stored, validate=True)
            except ValueError as exc:
                raise KeyringUnavailable("the keyring entry is not a key-file key") from exc
            if len(key) != 32:
                raise KeyringUnavailable("the keyring entry is not a key-file key")
            return key
        if not secret:
            raise PassphraseRequired(f"key file {self._path} needs its passphrase")
        return _scrypt(secret, header.kdf)

    def _unlocked_keys(self) -> dict[int, MemoryKey]:
        """The decrypted keys; unlocks through the keyring or the secret source (once) when locked."""
        self._ensure_open()
        if self._keys is not None:
            return self._keys
        if self._header.kdf["name"] == "keyring":
            self.unlock("")
        else:
            secret = self._source(f"passphrase for keyagent key file {self._path}") if self._source else None
            if secret is None:
                raise PassphraseRequired(f"key file {self._path} is locked; unlock it with its passphrase")
            self.unlock(secret)
        assert self._keys is not None
        return self._keys

    def _key(self, slot: int, pub: bytes) -> MemoryKey:
        with self._mu:
            key = self._unlocked_keys().get(slot)
        if key is None or key.public_key() != pub:
            raise KeyNotFound(f"key {slot} is no longer in the key file")
        return key

    def _add_key(self, version: int, key: MemoryKey) -> KeyOps:
        with self._mu:
            if version in self._header.spk_pubs:
                raise KeyExists(f"signed prekey version {version} already exists")
            keys = dict(self._unlocked_keys())
            keys[version] = key
            pubs = dict(self._header.spk_pubs)
            pubs[version] = key.public_key()
            self._commit(pubs, keys)
        return _SoftKey(self, version, key.public_key())

    def _commit(self, pubs: dict[int, bytes], keys: dict[int, MemoryKey]) -> None:
        """Write the file first; only then switch the in-memory state (no state change on failure)."""
        assert self._file_key is not None
        header = _Header(self._header.kdf, self._header.identity_pub, pubs)
        _write_file(self._path, header, self._file_key, keys)
        self._header, self._keys = header, keys


def _scrypt(passphrase: str, kdf: Mapping[str, Any]) -> bytes:
    salt = base64.b64decode(kdf["salt"])
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _check_value(file_key: bytes) -> bytes:
    return hmac.new(file_key, _CHECK_LABEL, hashlib.sha256).digest()[:16]


def _write_file(path: str, header: _Header, file_key: bytes, keys: dict[int, MemoryKey]) -> None:
    plain = json.dumps(
        {
            "identity": keys[_IDENTITY].secret_for_export().hex(),
            "signed_prekeys": {str(v): k.secret_for_export().hex() for v, k in sorted(keys.items()) if v},
        },
        sort_keys=True,
    ).encode()
    nonce = secrets.token_bytes(12)
    ct = AESGCM(file_key).encrypt(nonce, plain, header.aad())
    doc = json.loads(header.aad())
    doc.update(check=_check_value(file_key).hex(), nonce=_b64(nonce), ciphertext=_b64(ct))
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def _decrypt(path: str, header: _Header, file_key: bytes) -> dict[int, MemoryKey]:
    with open(open_nofollow(path, os.O_RDONLY), "rb") as fh:
        doc = json.loads(fh.read(_MAX_FILE))
    if not hmac.compare_digest(_unhex(doc["check"], "check", 16), _check_value(file_key)):
        raise PassphraseIncorrect(f"wrong passphrase for key file {path}")
    nonce = _unb64(doc["nonce"], "nonce")
    if len(nonce) != 12:
        raise KeyFileCorrupt("key file nonce has the wrong length")
    try:
        plain = AESGCM(file_key).decrypt(nonce, _unb64(doc["ciphertext"], "ciphertext"), header.aad())
    except InvalidTag as exc:
        raise KeyFileCorrupt(f"key file {path} fails authentication (tampered or damaged)") from exc
    try:
        body = json.loads(plain)
        keys = {_IDENTITY: MemoryKey(bytes.fromhex(body["identity"]))}
        for ver, hx in body["signed_prekeys"].items():
            keys[_version_key(ver)] = MemoryKey(bytes.fromhex(hx))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileCorrupt("key file plaintext does not parse") from exc
    # The public fields are authenticated, but make sure they match the secrets they describe.
    if keys[_IDENTITY].public_key() != header.identity_pub or {
        v: k.public_key() for v, k in keys.items() if v
    } != header.spk_pubs:
        raise KeyFileCorrupt("key file public keys do not match its private keys")
    return keys
