"""PKCS#11 backend: the identity key and signed prekeys live on a token as non-extractable secp256k1 keys.

Threading. python-pkcs11 0.10.1 calls ``C_Initialize(NULL)``; SoftHSM2 then disables its own mutexes, and since
python-pkcs11 releases the GIL around every C call, two threads on the token at once crash the process
(SIGSEGV, heap corruption, livelock; measured). So every PKCS#11 call runs on a worker thread owned by this
backend, fed FIFO from a queue. With ``os_locking=True`` the module is initialised with ``CKF_OS_LOCKING_OK``
(its own mutexes on) and ``workers`` > 1 threads may run token calls in parallel, each on its own session;
management (login, keygen, reconnect) then takes an exclusive lock.

Token quirks handled here (each measured on SoftHSM 2.6.1 / p11-kit 0.24, see pkcs11-probe.md):

* ``Session.close()`` on the session that logged in calls ``C_Logout`` for every session: keep one login
  session, close it last.
* ``Token.open(user_pin=wrong)`` leaks the session it opened; we close it with ``C_CloseAllSessions`` (we hold
  no session while logging in).
* SoftHSM returns high S about half the time: S is normalised and V found by recovery on the host.
* SoftHSM never locks a PIN; the agent keeps its own failure counter.
* A token that vanished (p11-kit server stopped, SoftHSM store gone) shows up as DeviceError, DeviceRemoved,
  TokenNotPresent, SessionHandleInvalid, ObjectHandleInvalid, or a GeneralError; after it returns, the loaded
  module does not recover until ``C_Finalize``/``C_Initialize``. The backend reconnects lazily before the next
  operation and checks that the identity key is still the same one (a test signature recovered on the host).
* An off-curve peer point makes ``C_DeriveKey`` fail with GeneralError: peers are validated on the host first.
"""

from __future__ import annotations

import _thread
import ctypes
import json
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import pkcs11
import pkcs11.exceptions as px
from asn1crypto.core import OctetString
from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import _pkcs11
from pkcs11.util.ec import encode_named_curve_parameters

from agent.core import secp256k1
from agent.core.hashing import keccak256
from agent.core.keyops import KeyOps
from backends.base import MAX_SPK_VERSION, BackendStatus, SecretSource, SignedPrekeyInfo
from backends.errors import (
    BackendConfigError,
    BackendError,
    IdentityChanged,
    KeyExists,
    KeyExtractable,
    KeyNotFound,
    MechanismUnsupported,
    PinFinalTry,
    PinIncorrect,
    PinLocked,
    PinRequired,
    TokenAbsent,
    TokenError,
)
from backends.pin import PinCache
from backends.token_select import TokenSelector, parse_selector

__all__ = ["Pkcs11Backend", "KeyRef", "spk_key_ref", "identity_key_ref", "SECP256K1_PARAMS", "load_lib"]

T = TypeVar("T")

SECP256K1_PARAMS = encode_named_curve_parameters("secp256k1")  # DER OID 1.3.132.0.10
_KIND_IK, _KIND_SPK = 1, 2
_HEALTH_DIGEST = keccak256(b"keyagent identity check")

# Errors that mean "the token, the slot or our handles are gone": reconnect before the next operation.
_GONE: tuple[type[BaseException], ...] = (
    px.DeviceRemoved, px.TokenNotPresent, px.DeviceError, px.SessionHandleInvalid, px.SessionClosed,
    px.ObjectHandleInvalid, px.KeyHandleInvalid, px.SlotIDInvalid, px.TokenNotRecognised, px.NoSuchToken,
    px.UserNotLoggedIn,  # a replugged token comes back logged out
)
# Errors that may or may not mean removal (SoftHSM gives GeneralError with its store deleted): probe.
_MAYBE_GONE: tuple[type[BaseException], ...] = (px.GeneralError, px.FunctionFailed, px.DeviceMemory)


@dataclass(frozen=True)
class KeyRef:
    """How a key pair is found on the token: CKA_ID (and CKA_LABEL when given)."""

    id: bytes
    label: str | None


def identity_key_ref(namespace: bytes) -> KeyRef:
    return KeyRef(namespace + bytes([_KIND_IK]) + b"\0\0\0\0", f"keyagent-ik-{namespace.hex()}")


def spk_key_ref(namespace: bytes, version: int) -> KeyRef:
    return KeyRef(namespace + bytes([_KIND_SPK]) + version.to_bytes(4, "big"), f"keyagent-spk{version}-{namespace.hex()}")


# ----- library loading ------------------------------------------------------------------------------------------
class _InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", ctypes.c_ulong), ("pReserved", ctypes.c_void_p)]


_CKF_OS_LOCKING_OK = 0x2
_CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191


class _LockingLib(_pkcs11.lib):
    """python-pkcs11's lib, initialised with CKF_OS_LOCKING_OK so the module uses its own mutexes.

    ``initialize`` is a cpdef method, so overriding it from Python works (relies on python-pkcs11 0.10.1
    internals; the version is pinned). ``lib.initialized`` stays False, so finalisation goes through ctypes.
    """

    def initialize(self) -> None:
        args = _InitArgs(None, None, None, None, _CKF_OS_LOCKING_OK, None)
        rv = ctypes.CDLL(self.so).C_Initialize(ctypes.byref(args))
        if rv not in (0, _CKR_CRYPTOKI_ALREADY_INITIALIZED):
            raise px.PKCS11Error(f"C_Initialize with OS locking failed, rv=0x{rv:x}")

    def reinitialize(self) -> None:
        ctypes.CDLL(self.so).C_Finalize(None)
        self.initialize()


_locking_libs: dict[str, Any] = {}
_lib_guard = threading.Lock()


def load_lib(module: str, os_locking: bool = False) -> Any:
    """The loaded PKCS#11 module (one instance per path and process, as python-pkcs11 caches it)."""
    with _lib_guard:
        try:
            if os_locking:
                lib = _locking_libs.get(module)
                if lib is None:
                    lib = _locking_libs[module] = _LockingLib(module)
                return lib
            return pkcs11.lib(module)
        except px.PKCS11Error as exc:
            if "while loading" in str(exc):  # python-pkcs11 reports dlopen failures as a bare PKCS11Error
                raise BackendConfigError(f"cannot load PKCS#11 module {module}: {exc}") from exc
            raise TokenAbsent(f"PKCS#11 module {module} does not initialise: {type(exc).__name__}") from exc
        except (OSError, RuntimeError) as exc:
            raise BackendConfigError(f"cannot load PKCS#11 module {module}: {exc}") from exc


def _reinitialize(lib: Any) -> None:
    if isinstance(lib, _LockingLib):
        lib.reinitialize()
    elif lib.initialized:
        lib.reinitialize()
    else:  # a previous reinitialize failed half-way (finalised, init raised): just initialise
        lib.initialize()


def _close_all_sessions(lib: Any, slot_id: int) -> None:
    """C_CloseAllSessions through ctypes: python-pkcs11 has no wrapper, and it leaks a session per failed login."""
    try:
        ctypes.CDLL(lib.so).C_CloseAllSessions(ctypes.c_ulong(slot_id))
    except OSError:  # pragma: no cover - the module was loaded, so dlopen cannot fail now
        pass


# ----- the worker ------------------------------------------------------------------------------------------------
class _RWLock:
    """Many readers (parallel sign/dh) or one writer (login, keygen, reconnect).

    The writer may re-enter (a PIN source or a nested call on the same worker must not deadlock it).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0

    def acquire_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return
            while self._writer is not None:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            if self._writer == threading.get_ident():
                self._depth -= 1
                return
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._writer, self._depth = me, 1

    def release_write(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._writer = None
                self._cond.notify_all()


class _Worker:
    """FIFO queue in front of ``n`` threads that own every PKCS#11 call.

    The hand-off is a bare lock per call (acquired by the caller, released by the worker): measurably cheaper
    than a concurrent.futures.Future, and this sits in front of every token operation.
    """

    def __init__(self, n: int, name: str) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], Any] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(n)]
        self._idents: set[int] = set()
        self._stopped = False
        for t in self._threads:
            t.start()
            assert t.ident is not None
            self._idents.add(t.ident)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, box, done = item
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller, never lost
                box.append((False, exc))
            finally:
                done.release()

    def call(self, fn: Callable[[], T]) -> T:
        if threading.get_ident() in self._idents:  # already on a worker: run inline (no self-deadlock)
            return fn()
        if self._stopped:
            raise BackendConfigError("backend is closed")
        done = _thread.allocate_lock()
        done.acquire()
        box: list[tuple[bool, Any]] = []
        self._q.put((fn, box, done))
        done.acquire()
        ok, value = box[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def stop(self) -> None:
        self._stopped = True
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            if t.ident != threading.get_ident():
                t.join(timeout=10)


# ----- the backend -----------------------------------------------------------------------------------------------
class _TokenKey:
    """KeyOps handle for one key pair on the token; the private object is looked up per worker session."""

    __slots__ = ("_backend", "_ref", "_pub")

    def __init__(self, backend: "Pkcs11Backend", ref: KeyRef, pub: bytes) -> None:
        self._backend, self._ref, self._pub = backend, ref, pub

    def public_key(self) -> bytes:
        return self._pub

    def sign(self, digest: bytes) -> bytes:
        if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        digest = bytes(digest)
        # Always Mechanism.ECDSA on the host-made Keccak digest: SoftHSM rejects the hash-on-token variants.
        rs = self._backend._op(self._ref, lambda key: self._sign_raw(key, digest))
        # Low-S and the recovery id are host work, done off the worker thread so the token stays busy.
        return secp256k1.recoverable_from_rs(bytes(rs), digest, self._pub)

    def _sign_raw(self, key: Any, digest: bytes) -> bytes:
        if Mechanism.ECDSA not in self._backend._mechanisms:
            raise MechanismUnsupported("the token offers no raw ECDSA mechanism")
        return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

    def dh(self, peer_public: bytes) -> bytes:
        peer = secp256k1.decompress(peer_public)  # MalformedKey here, not a GeneralError from the token

        def derive(key: Any) -> bytes:
            if Mechanism.ECDH1_DERIVE not in self._backend._mechanisms:
                # p11-kit 0.24's RPC (p11-kit-client.so) drops ECDH1_DERIVE: its wire format has no
                # CK_ECDH1_DERIVE_PARAMS, so the mechanism is neither listed nor usable (measured).
                raise MechanismUnsupported("the token offers no ECDH1_DERIVE (p11-kit < 0.25 in between?)")
            secret = key.derive_key(
                KeyType.GENERIC_SECRET, 256, mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(KDF.NULL, None, peer),
                # the shared x must be readable: a session object, not sensitive, destroyed at once below
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},  # store=False: session obj
            )
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                secret.destroy()

        x = self._backend._op(self._ref, derive)
        if len(x) != 32:
            raise TokenError("token returned a shared secret of the wrong length")
        return x

    def __repr__(self) -> str:
        return f"TokenKey(id={self._ref.id.hex()}, pub={self._pub.hex()})"


class _Local(threading.local):
    gen = -1
    key_epoch = -1
    session: Any = None
    keys: dict[bytes, Any]

    def __init__(self) -> None:
        self.keys = {}


class Pkcs11Backend:
    """Backend over a PKCS#11 token. See the module docstring for threading and token quirks.

    Args:
        module: path of the PKCS#11 module (from the agent's config or command line only).
        token: selector: RFC 7512 URI, ``serial:...``, ``label:...`` or a bare label.
        namespace: 8 random bytes chosen at init; SPK ids and labels derive from it.
        identity: where the identity key pair is (generated ids, or an adopted pkcs11-tool key).
        identity_public_key: the configured 33-byte identity key; None only while provisioning.
        token_serial: the serial recorded at init; a token with another serial is refused before any PIN.
        pin_source: asked once when a PIN is needed and none is cached (never retried).
        pin_ttl: seconds a PIN is kept for re-login after a reconnect (0: never kept).
        max_pin_failures: the agent's own limit on consecutive wrong PINs (SoftHSM has none).
        allow_extractable: accept a private key that could leave the token (the user forced it).
        os_locking, workers: see the module docstring.
    """

    kind = "pkcs11"

    def __init__(
        self,
        module: str,
        token: str,
        *,
        namespace: bytes,
        identity: KeyRef | None = None,
        identity_public_key: bytes | None = None,
        token_serial: str | None = None,
        pin_source: SecretSource | None = None,
        pin_ttl: float = 900.0,
        max_pin_failures: int = 3,
        allow_extractable: bool = False,
        os_locking: bool = False,
        workers: int = 1,
        clock: Callable[[], float] | None = None,
        lib_loader: Callable[[str, bool], Any] = load_lib,
        failure_file: str | None = None,
    ) -> None:
        if len(namespace) != 8:
            raise BackendConfigError("key namespace must be 8 bytes")
        if workers < 1 or (workers > 1 and not os_locking):
            raise BackendConfigError("more than one token worker needs os_locking (the module's own mutexes)")
        try:
            self._selector: TokenSelector = parse_selector(token)
        except ValueError as exc:
            raise BackendConfigError(f"bad token selector: {exc}") from exc
        self._module, self._os_locking = module, os_locking
        self._ns = namespace
        self._ik_ref = identity or identity_key_ref(namespace)
        self._ik_pub = identity_public_key
        self._serial_pinned = token_serial
        self._pin_source = pin_source
        self._pins = PinCache(pin_ttl, clock) if clock else PinCache(pin_ttl)
        self._max_failures = max_pin_failures
        self._allow_extractable = allow_extractable
        self._lib_loader = lib_loader
        # connection state: touched only on worker threads, under the write lock (or reads under the read lock)
        self._lib: Any = None
        self._token: Any = None
        self._slot_id = 0
        self._serial = ""
        self._label = ""
        self._login: Any = None  # the session that did C_Login; closing it logs everything out
        self._gen = 0
        self._broken = True  # (re)connect before the first operation
        self._sessions: list[Any] = []  # every worker session of the current generation
        self._key_epoch = 0
        self._spk_pubs: dict[int, bytes] = {}  # version -> public key, as last seen on the token
        self._mechanisms: set[Any] = set()
        self._failure_file = failure_file
        self._failures = 0  # consecutive wrong PINs for the token with serial _failures_serial
        self._failures_serial = ""
        self._load_failures()
        self._closed = False
        self._rw = _RWLock()
        self._local = _Local()
        self._worker = _Worker(workers, "pkcs11")

    # ----- Backend interface ----------------------------------------------------------------------------------
    def identity(self) -> KeyOps:
        if self._ik_pub is None:
            self._ik_pub = self._exclusive(lambda: self._read_public(self._ik_ref))
        return _TokenKey(self, self._ik_ref, self._ik_pub)

    def create_signed_prekey(self, version: int) -> KeyOps:
        ref = spk_key_ref(self._ns, _check_version(version))
        pub = self._exclusive(lambda: self._generate(ref), login=True)
        self._spk_pubs[version] = pub
        return _TokenKey(self, ref, pub)

    def signed_prekey(self, version: int) -> KeyOps:
        ref = spk_key_ref(self._ns, _check_version(version))
        pub = self._spk_pubs.get(version)  # no token round trip for a key we created or listed
        if pub is None:
            pub = self._exclusive(lambda: self._read_public(ref))
            self._spk_pubs[version] = pub
        return _TokenKey(self, ref, pub)

    def list_signed_prekeys(self) -> list[SignedPrekeyInfo]:
        infos = self._exclusive(self._list_spks)
        self._spk_pubs = {i.version: i.public_key for i in infos}  # the token is the truth
        return infos

    def destroy_signed_prekey(self, version: int) -> None:
        ref = spk_key_ref(self._ns, _check_version(version))
        self._spk_pubs.pop(version, None)  # before: even a failed destroy must not leave a stale handle source
        self._exclusive(lambda: self._destroy(ref), login=True)

    def status(self) -> BackendStatus:
        def probe() -> BackendStatus:
            present = True
            try:
                self._ensure_connected()
                self._token_flags()
            except BackendError:
                present = False
            except px.PKCS11Error:  # gone under an open session (not yet noticed): say so, reconnect on next use
                self._mark_broken()
                present = False
            return BackendStatus(
                kind=self.kind, present=present, unlocked=self._login is not None and not self._broken,
                identity_public_key=self._ik_pub or b"", detail=f"{self._label} (serial {self._serial})",
                pin_failures=self._failures,
            )

        return self._worker.call(lambda: self._locked_inline(probe))  # probe connects itself, errors caught

    def release(self) -> None:
        # Closing the login session logs out (C_Logout), which is what lets another program's session in on a
        # card that allows one login at a time. The PIN cache is kept (TTL), so the next operation logs in again.
        self._worker.call(lambda: self._locked_inline(lambda: self._drop_sessions(logout=True)))

    def lock(self) -> None:
        def do() -> None:
            self._pins.clear()
            self._drop_sessions(logout=True)

        self._worker.call(lambda: self._locked_inline(do))

    def unlock(self, secret: str, *, force: bool = False) -> None:
        if not isinstance(secret, str) or not secret:
            raise PinIncorrect("empty PIN refused (not sent to the token)", tries_left=None)
        self._exclusive(lambda: self._do_login(secret, force=force))

    def close(self) -> None:
        if self._closed:
            return

        def do() -> None:
            self._pins.clear()
            self._drop_sessions(logout=True)
            self._closed = True

        try:
            self._worker.call(lambda: self._locked_inline(do))  # no reconnect just to close
        finally:
            self._worker.stop()

    # ----- provisioning (used by keyagent init / migrate) ---------------------------------------------------
    @property
    def token_serial(self) -> str:
        return self._exclusive(lambda: self._serial)

    @property
    def token_label(self) -> str:
        return self._exclusive(lambda: self._label)

    def generate_identity(self) -> bytes:
        """Generate the identity key pair on the token (SENSITIVE, non-EXTRACTABLE, TOKEN); its public key."""
        pub = self._exclusive(lambda: self._generate(self._ik_ref), login=True)
        self._ik_pub = pub
        return pub

    def import_key(self, ref: KeyRef, secret: bytes) -> bytes:
        """Import a software scalar as a SENSITIVE, non-EXTRACTABLE token key.

        The token records it as imported: ALWAYS_SENSITIVE, NEVER_EXTRACTABLE and LOCAL are false, because the
        key existed outside the token before. It is protected from now on, not "never extractable".
        """
        if not secp256k1.valid_secret(secret):
            raise BackendConfigError("not a valid secp256k1 private key")
        pub65 = secp256k1.public_key(secp256k1.compress(_pub_of(secret))).format(compressed=False)

        def do() -> bytes:
            s = self._local_session()
            if self._find(s, ref, ObjectClass.PRIVATE_KEY) is not None:
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

        pub = self._exclusive(do, login=True)
        if ref == self._ik_ref:
            self._ik_pub = pub
        return pub

    def adopt(self, key_id: bytes | None, label: str | None) -> KeyRef:
        """Make an existing key pair (e.g. one made by ``pkcs11-tool --keypairgen``) the identity; its ref.

        Found by id, or by label when no id is given (then exactly one EC private key must carry it). The
        private half must be SENSITIVE and non-EXTRACTABLE unless the backend was built with allow_extractable.
        """

        def do() -> KeyRef:
            s = self._local_session()
            if key_id is not None:
                ref = KeyRef(key_id, label)
            else:
                found = list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                            Attribute.KEY_TYPE: KeyType.EC, Attribute.LABEL: label or ""}))
                if not found:
                    raise KeyNotFound(f"no EC private key labelled {label!r} on token {self._label}")
                if len(found) > 1:
                    raise BackendConfigError(f"{len(found)} keys are labelled {label!r}; adopt by id")
                ref = KeyRef(bytes(found[0][Attribute.ID]), label)
            priv = self._find(s, ref, ObjectClass.PRIVATE_KEY)
            if priv is None:
                raise KeyNotFound(f"no private key with id {ref.id.hex()} on token {self._label}")
            self._check_protection(priv, "adopted")
            pub = self._read_public(ref)
            # prove the pair belongs together before trusting the public object
            rs = bytes(priv.sign(_HEALTH_DIGEST, mechanism=Mechanism.ECDSA))
            try:
                secp256k1.recoverable_from_rs(rs, _HEALTH_DIGEST, pub)
            except ValueError as exc:
                raise IdentityChanged("the adopted private and public key objects do not match") from exc
            self._ik_ref, self._ik_pub = ref, pub
            return ref

        return self._exclusive(do, login=True)

    def destroy_key(self, ref: KeyRef) -> None:
        """Destroy a key pair by ref (provisioning rollback)."""
        self._exclusive(lambda: self._destroy(ref), login=True)

    def import_signed_prekey(self, version: int, secret: bytes) -> KeyOps:
        ref = spk_key_ref(self._ns, _check_version(version))
        pub = self.import_key(ref, secret)
        self._spk_pubs[version] = pub
        return _TokenKey(self, ref, pub)

    def private_key_attributes(self, ref: KeyRef | None = None) -> dict[str, bool]:
        """The protection attributes of a private key as the token reports them (for tests and ``status``)."""
        names = ("TOKEN", "PRIVATE", "SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE", "LOCAL",
                 "SIGN", "DERIVE")

        def do() -> dict[str, bool]:
            key = self._private(ref or self._ik_ref)
            return {n: bool(key[getattr(Attribute, n)]) for n in names}

        return self._exclusive(do, login=True)

    # ----- operations -----------------------------------------------------------------------------------------
    def _op(self, ref: KeyRef, fn: Callable[[Any], T]) -> T:
        """Run ``fn(private key object)`` on a worker, reconnecting / logging in first when needed."""

        def run() -> T:
            while True:
                self._rw.acquire_read()
                gen = self._gen
                try:
                    ready = not self._broken and self._login is not None and not self._closed
                    if ready:
                        loc = self._local
                        fresh = loc.gen == self._gen and loc.key_epoch == self._key_epoch
                        key = loc.keys.get(ref.id) if fresh else None
                        try:
                            if key is None:
                                key = self._private(ref)
                            return fn(key)
                        except _GONE as exc:
                            gone: BaseException | None = exc
                        except _MAYBE_GONE as exc:
                            gone = exc
                            if self._healthy():
                                raise TokenError(f"the token refused the operation: {type(exc).__name__}") from exc
                        except px.PKCS11Error as exc:
                            raise TokenError(f"the token refused the operation: {type(exc).__name__}") from exc
                finally:
                    self._rw.release_read()
                if ready:
                    # only if nobody reconnected meanwhile (another worker may have seen the same loss)
                    self._locked_inline(lambda: self._mark_broken() if self._gen == gen else None)
                    raise TokenAbsent("the token went away during the operation") from gone
                # not ready: connect and log in under the write lock, then retry the (read) operation once
                self._exclusive_inline(lambda: None, login=True)

        return self._worker.call(run)

    def _exclusive(self, fn: Callable[[], T], *, login: bool = False) -> T:
        return self._worker.call(lambda: self._exclusive_inline(fn, login=login))

    def _locked_inline(self, fn: Callable[[], T]) -> T:
        """On a worker thread: run ``fn`` under the write lock without connecting first."""
        self._rw.acquire_write()
        try:
            return fn()
        finally:
            self._rw.release_write()

    def _exclusive_inline(self, fn: Callable[[], T], *, login: bool = False) -> T:
        """On a worker thread: take the write lock, (re)connect, optionally log in, run ``fn``."""
        if self._closed:
            raise BackendConfigError("backend is closed")
        self._rw.acquire_write()
        try:
            try:
                self._ensure_connected()
                if login and self._login is None:
                    self._login_from_cache_or_source()
                return fn()
            except _GONE as exc:
                self._mark_broken()
                raise TokenAbsent(f"the token went away: {type(exc).__name__}") from exc
            except _MAYBE_GONE as exc:
                if not self._healthy():
                    self._mark_broken()
                    raise TokenAbsent(f"the token went away: {type(exc).__name__}") from exc
                raise TokenError(f"the token refused the operation: {type(exc).__name__}") from exc
            except px.PKCS11Error as exc:
                raise TokenError(f"the token refused the operation: {type(exc).__name__}") from exc
        finally:
            self._rw.release_write()

    # ----- connection management (write lock held) ----------------------------------------------------------
    def _mark_broken(self) -> None:
        self._broken = True
        self._login = None
        self._sessions = []
        self._gen += 1

    def _ensure_connected(self) -> None:
        if not self._broken:
            return
        first = self._lib is None
        try:
            if first:
                self._lib = self._lib_loader(self._module, self._os_locking)
            else:
                _reinitialize(self._lib)  # handles from before are void; the module re-reads its slots
            try:
                token = self._find_token()
            except px.PKCS11Error:
                if not first:
                    raise
                token = None
            if first and (token is None or not self._serial_ok(token)):
                # A token created or replugged after the module was loaded is only visible after C_Initialize
                # (and a removed one may still be listed until then).
                _reinitialize(self._lib)
                token = self._find_token()
        except BackendError:
            raise
        except px.PKCS11Error as exc:
            raise TokenAbsent(f"the PKCS#11 module cannot reach the token: {type(exc).__name__}") from exc
        if token is None:
            raise TokenAbsent(f"no token matches {self._selector.describe()}")
        serial = token.serial.decode("ascii", "replace").strip()
        if self._serial_pinned is not None and serial != self._serial_pinned:
            raise IdentityChanged(
                f"the token matching {self._selector.describe()} has serial {serial}, "
                f"not the configured {self._serial_pinned}; no PIN was tried")
        self._token, self._slot_id = token, token.slot.slot_id
        self._mechanisms = set(token.slot.get_mechanisms())
        self._serial, self._label = serial, token.label.strip()
        self._gen += 1
        self._sessions, self._login = [], None
        self._broken = False
        cached = self._pins.get(serial)
        if cached is not None:  # re-login after a replug with the PIN the user gave for this very token
            try:
                self._do_login(cached, force=False, from_cache=True)
            except (PinIncorrect, PinLocked, PinFinalTry):
                self._pins.clear()  # the PIN changed meanwhile: ask the user, never retry it

    def _serial_ok(self, token: Any) -> bool:
        serial = token.serial.decode("ascii", "replace").strip()
        return self._serial_pinned is None or serial == self._serial_pinned

    def _find_token(self) -> Any:
        matches = []
        for slot in self._lib.get_slots(token_present=True):
            try:
                tok = slot.get_token()
            except (px.TokenNotPresent, px.TokenNotRecognised, px.DeviceRemoved):
                continue
            if self._selector.matches(
                label=tok.label.strip(), serial=tok.serial.decode("ascii", "replace").strip(),
                manufacturer=tok.manufacturer_id.strip(), model=tok.model.strip(), slot_id=slot.slot_id,
            ):
                matches.append(tok)
        if len(matches) > 1:
            raise BackendConfigError(
                f"{len(matches)} tokens match {self._selector.describe()}; select one by serial")
        return matches[0] if matches else None

    def _healthy(self) -> bool:
        """Cheap probe after an ambiguous error: can we still see the token and our identity key?"""
        if self._broken or self._token is None:
            return False
        try:
            self._lib.get_slots(token_present=True)
            s = self._local_session()
            return self._find(s, self._ik_ref, ObjectClass.PUBLIC_KEY) is not None
        except (px.PKCS11Error, BackendError):
            return False

    def _token_flags(self) -> int:
        return int(self._token.slot.get_token().flags)

    def _drop_sessions(self, *, logout: bool) -> None:
        """Close worker sessions, then the login session (whose close logs out); ignore errors of a lost token."""
        for s in self._sessions:
            try:
                s.close()
            except px.PKCS11Error:
                pass
        self._sessions = []
        if logout and self._login is not None:
            try:
                self._login.close()
            except px.PKCS11Error:
                pass
            self._login = None
        self._gen += 1

    def _local_session(self) -> Any:
        """This worker thread's session for the current generation (opened without PIN: inherits the login)."""
        loc = self._local
        if loc.gen != self._gen or loc.session is None:
            loc.session = self._token.open(rw=True)
            loc.keys = {}
            loc.gen = self._gen
            self._sessions.append(loc.session)
        if loc.key_epoch != self._key_epoch:
            loc.keys = {}
            loc.key_epoch = self._key_epoch
        return loc.session

    # ----- PIN ------------------------------------------------------------------------------------------------
    def _login_from_cache_or_source(self) -> None:
        pin = self._pins.get(self._serial)
        if pin is None and self._pin_source is not None:
            pin = self._pin_source(f"user PIN of token {self._label} (serial {self._serial})")
        if not pin:
            raise PinRequired(f"token {self._label} (serial {self._serial}) needs its PIN: run keyagent unlock")
        self._do_login(pin, force=False)

    def _do_login(self, pin: str, *, force: bool, from_cache: bool = False) -> None:
        """One C_Login attempt, after checking the token's and the agent's counters. Never retried."""
        self._ensure_connected()
        if self._login is not None:
            return  # already logged in on this token
        flags = self._token_flags()
        if flags & TokenFlag.USER_PIN_LOCKED:
            raise PinLocked(f"the user PIN of token {self._label} is locked; unblock it with the SO PIN")
        if flags & TokenFlag.USER_PIN_FINAL_TRY and not force:
            raise PinFinalTry(f"token {self._label} reports that a wrong PIN now locks it; retry with force")
        if self._failures_serial != self._serial:  # a count belongs to one token
            self._set_failures(0)
        if self._failures >= self._max_failures and not force and not from_cache:
            raise PinLocked(
                f"{self._failures} wrong PINs in a row for token {self._label}: the agent refuses more tries "
                "without force (the token itself may not count them)")
        # Hold no session while logging in, so that the one python-pkcs11 leaks on failure can be closed.
        self._drop_sessions(logout=False)
        try:
            session = self._token.open(rw=True, user_pin=pin)
        except px.PinIncorrect as exc:
            self._set_failures(self._failures + 1)
            _close_all_sessions(self._lib, self._slot_id)
            raise PinIncorrect(
                f"wrong PIN for token {self._label}", tries_left=max(self._max_failures - self._failures, 0)
            ) from exc
        except (px.PinLocked, px.PinExpired) as exc:
            _close_all_sessions(self._lib, self._slot_id)
            raise PinLocked(f"token {self._label} refuses the PIN: {type(exc).__name__}") from exc
        except (px.PinLenRange, px.PinInvalid) as exc:
            _close_all_sessions(self._lib, self._slot_id)
            raise PinIncorrect(f"the token rejects this PIN's format: {type(exc).__name__}") from exc
        except px.UserAlreadyLoggedIn:
            # Someone else in this process logged in already (login is per process and token): share it.
            # The session the failed C_Login leaked stays open: closing all sessions would log the other out.
            session = self._token.open(rw=True)
            session_is_login = False
        else:
            session_is_login = True
        self._login = session
        if not session_is_login:
            self._sessions.append(session)
        self._set_failures(0)
        self._pins.put(self._serial, pin)
        try:
            self._check_identity()
        except BaseException:
            self._drop_sessions(logout=True)
            raise

    def _load_failures(self) -> None:
        """The persisted count, so restarting the agent does not reset its PIN guard (SoftHSM has none)."""
        if not self._failure_file:
            return
        try:
            with open(self._failure_file, "rb") as fh:
                doc = json.loads(fh.read(4096))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            doc = None
        if (isinstance(doc, dict) and isinstance(doc.get("serial"), str) and isinstance(doc.get("failures"), int)
                and not isinstance(doc.get("failures"), bool) and doc["failures"] >= 0):
            self._failures, self._failures_serial = doc["failures"], doc["serial"]
        else:  # unreadable: fail closed (the user can still force one try)
            self._failures, self._failures_serial = self._max_failures, self._serial_pinned or ""

    def _set_failures(self, n: int) -> None:
        changed = n != self._failures or self._failures_serial != self._serial
        self._failures, self._failures_serial = n, self._serial
        if self._failure_file and changed:
            from backends.software import write_atomic

            write_atomic(self._failure_file, json.dumps({"serial": self._serial, "failures": n}).encode())

    def _check_identity(self) -> None:
        """After each login: the identity private key is here, acceptable, and matches the configured public key."""
        if self._ik_pub is None:
            return  # provisioning: nothing configured yet
        s = self._local_session()
        priv = self._find(s, self._ik_ref, ObjectClass.PRIVATE_KEY)
        if priv is None:
            raise IdentityChanged(f"token {self._label} holds no identity key with id {self._ik_ref.id.hex()}")
        self._check_protection(priv, "identity")
        rs = bytes(priv.sign(_HEALTH_DIGEST, mechanism=Mechanism.ECDSA))
        try:
            secp256k1.recoverable_from_rs(rs, _HEALTH_DIGEST, self._ik_pub)
        except ValueError as exc:
            raise IdentityChanged(f"the identity key on token {self._label} is not the configured one") from exc

    def _check_protection(self, priv: Any, what: str) -> None:
        if self._allow_extractable:
            return
        if not priv[Attribute.SENSITIVE] or priv[Attribute.EXTRACTABLE]:
            raise KeyExtractable(
                f"the {what} private key on token {self._label} can leave the token (SENSITIVE=false or "
                "EXTRACTABLE=true); refused unless forced")

    # ----- key objects (write or read lock held) --------------------------------------------------------------
    def _find(self, session: Any, ref: KeyRef, cls: ObjectClass) -> Any:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: cls, Attribute.KEY_TYPE: KeyType.EC, Attribute.ID: ref.id}
        if ref.label:
            attrs[Attribute.LABEL] = ref.label
        found = list(session.get_objects(attrs))
        if len(found) > 1:
            raise BackendConfigError(f"{len(found)} keys on the token have id {ref.id.hex()}")
        return found[0] if found else None

    def _private(self, ref: KeyRef) -> Any:
        """This thread's handle on a private key (cached per session generation)."""
        s = self._local_session()
        key = self._find(s, ref, ObjectClass.PRIVATE_KEY)
        if key is None:
            raise KeyNotFound(f"no private key with id {ref.id.hex()} on token {self._label}")
        if ref != self._ik_ref:
            self._check_protection(key, f"key {ref.id.hex()}")
        self._local.keys[ref.id] = key
        return key

    def _read_public(self, ref: KeyRef) -> bytes:
        s = self._local_session()
        pub = self._find(s, ref, ObjectClass.PUBLIC_KEY)
        if pub is None:
            raise KeyNotFound(f"no public key with id {ref.id.hex()} on token {self._label}")
        return _point33(pub[Attribute.EC_POINT])

    def _generate(self, ref: KeyRef) -> bytes:
        s = self._local_session()
        if self._find(s, ref, ObjectClass.PRIVATE_KEY) is not None or self._find(s, ref, ObjectClass.PUBLIC_KEY):
            raise KeyExists(f"a key with id {ref.id.hex()} already exists on the token")
        pub, _priv = s.generate_keypair(
            KeyType.EC, store=True, id=ref.id, label=ref.label or "", mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: SECP256K1_PARAMS, Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                              Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DERIVE: True},
        )
        return _point33(pub[Attribute.EC_POINT])

    def _list_spks(self) -> list[SignedPrekeyInfo]:
        s = self._local_session()
        prefix = self._ns + bytes([_KIND_SPK])
        out = []
        for obj in list(s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC})):
            oid = bytes(obj[Attribute.ID])
            if len(oid) == 13 and oid.startswith(prefix):
                out.append(SignedPrekeyInfo(int.from_bytes(oid[9:], "big"), _point33(obj[Attribute.EC_POINT])))
        return sorted(out, key=lambda i: i.version)

    def _destroy(self, ref: KeyRef) -> None:
        s = self._local_session()
        priv = self._find(s, ref, ObjectClass.PRIVATE_KEY)
        pub = self._find(s, ref, ObjectClass.PUBLIC_KEY)
        if priv is None and pub is None:
            raise KeyNotFound(f"no key with id {ref.id.hex()} on token {self._label}")
        if priv is not None:
            priv.destroy()  # the private half first: forward secrecy does not wait for the public object
        if pub is not None:
            pub.destroy()
        self._key_epoch += 1  # drop cached handles in every worker


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_SPK_VERSION:
        raise ValueError("signed prekey version must be an int in 1..2^32-1")
    return version


def _point33(ec_point: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the 65-byte point (some modules give the raw point)."""
    raw = bytes(ec_point)
    if len(raw) != 65:
        try:
            raw = bytes(OctetString.load(raw).native)
        except ValueError as exc:
            raise TokenError("the token's EC_POINT does not parse") from exc
    return secp256k1.compress(raw)


def _pub_of(secret: bytes) -> bytes:
    from backends.memory import MemoryKey

    return MemoryKey(secret).public_key()

