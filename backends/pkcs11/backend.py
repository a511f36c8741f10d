"""The PKCS#11 Backend: ties the worker, login and keys together, and is the one place that connects and heals.

Every public method hands its work to the worker (:mod:`backends.pkcs11.worker`): operations (sign, dh) under
the read lock, management (login, keygen, import, reconnect) under the write lock. Connection management, the
whole of the self-healing, is the section "connection" below. Token quirks handled there (measured on SoftHSM
2.6.1 / p11-kit 0.24, see pkcs11-probe.md):

* ``Session.close()`` on the session that logged in calls ``C_Logout`` for every session: keep one login
  session, close it last.
* A token that vanished (p11-kit server stopped, SoftHSM store gone) shows up as DeviceError, DeviceRemoved,
  TokenNotPresent, SessionHandleInvalid, ObjectHandleInvalid, or a GeneralError; after it returns, the loaded
  module does not recover until ``C_Finalize``/``C_Initialize``. The backend reconnects lazily before the next
  operation and checks that the identity key is still the same one (a test signature recovered on the host).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from typing import Any, Callable, TypeVar

import pkcs11.exceptions as px
from pkcs11 import Attribute, Mechanism, ObjectClass

from agent.core import secp256k1
from agent.core.keyops import KeyOps
from backends.base import BackendStatus, SecretSource, SignedPrekeyInfo
from backends.errors import (
    BackendConfigError,
    BackendError,
    IdentityChanged,
    KeyNotFound,
    PinFinalTry,
    PinIncorrect,
    PinLocked,
    PinRequired,
    TokenAbsent,
    TokenError,
)
from backends.pin import PinCache
from backends.pkcs11 import anchor_object, keys
from backends.pkcs11.keys import KeyRef, TokenKey, check_version, identity_key_ref, spk_key_ref
from backends.pkcs11.lib import load_lib, p11kit_ecdh_gap, reinitialize
from backends.pkcs11.login import FailureCounter, check_before_login, open_login_session
from backends.pkcs11.worker import RWLock, Worker
from backends.token_select import TokenSelector, parse_selector

__all__ = ["Pkcs11Backend"]

T = TypeVar("T")

# Errors that mean "the token, the slot or our handles are gone": reconnect before the next operation.
_GONE: tuple[type[BaseException], ...] = (
    px.DeviceRemoved, px.TokenNotPresent, px.DeviceError, px.SessionHandleInvalid, px.SessionClosed,
    px.ObjectHandleInvalid, px.KeyHandleInvalid, px.SlotIDInvalid, px.TokenNotRecognised, px.NoSuchToken,
    px.UserNotLoggedIn,  # a replugged token comes back logged out
)
# Errors that may or may not mean removal (SoftHSM gives GeneralError with its store deleted): probe.
_MAYBE_GONE: tuple[type[BaseException], ...] = (px.GeneralError, px.FunctionFailed, px.DeviceMemory)


def _pin_digest(salt: bytes, pin: str) -> bytes:
    """What an unlock on a logged-in token is compared with: the PIN itself is not kept for that."""
    return hashlib.sha256(salt + pin.encode("utf-8")).digest()


class _Local(threading.local):
    gen = -1
    key_epoch = -1
    session: Any = None
    keys: dict[bytes, Any]

    def __init__(self) -> None:
        self.keys = {}


class Pkcs11Backend:
    """Backend over a PKCS#11 token. See the :mod:`backends.pkcs11` docstring for threading and token quirks.

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
        os_locking, workers: see :mod:`backends.pkcs11.worker`.
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
        self._pin_check: tuple[bytes, bytes] | None = None  # (salt, digest) of the PIN of the current login
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
        self._failures = FailureCounter(failure_file, max_pin_failures, token_serial)
        self._closed = False
        self._rw = RWLock()
        self._local = _Local()
        self._worker = Worker(workers, "pkcs11")

    # ----- Backend interface ----------------------------------------------------------------------------------
    def identity(self) -> KeyOps:
        if self._ik_pub is None:
            self._ik_pub = self._exclusive(lambda: self._read_public(self._ik_ref))
        return TokenKey(self, self._ik_ref, self._ik_pub)

    def create_signed_prekey(self, version: int) -> KeyOps:
        ref = spk_key_ref(self._ns, check_version(version))
        pub = self._exclusive(lambda: keys.generate(self._local_session(), ref), login=True)
        self._spk_pubs[version] = pub
        return TokenKey(self, ref, pub)

    def signed_prekey(self, version: int) -> KeyOps:
        ref = spk_key_ref(self._ns, check_version(version))
        pub = self._spk_pubs.get(version)  # no token round trip for a key we created or listed
        if pub is None:
            pub = self._exclusive(lambda: self._read_public(ref))
            self._spk_pubs[version] = pub
        return TokenKey(self, ref, pub)

    def list_signed_prekeys(self) -> list[SignedPrekeyInfo]:
        infos = self._exclusive(lambda: keys.list_spks(self._local_session(), self._ns))
        self._spk_pubs = {i.version: i.public_key for i in infos}  # the token is the truth
        return infos

    def destroy_signed_prekey(self, version: int) -> None:
        ref = spk_key_ref(self._ns, check_version(version))
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
                pin_failures=self._failures.count,
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
        self._exclusive(lambda: self._unlock(secret, force=force))

    def _unlock(self, secret: str, *, force: bool) -> None:
        """Log in; when already logged in, check ``secret`` against the PIN that did (a wrong PIN must not be
        answered "unlocked"). The token cannot be asked again without logging out, so the check is against a
        salted hash kept since that login; nothing is sent to the token and its counter is not touched."""
        self._ensure_connected()
        if self._login is None:
            self._do_login(secret, force=force)
            return
        check = self._pin_check
        if check is None or not hmac.compare_digest(_pin_digest(check[0], secret), check[1]):
            raise PinIncorrect(f"wrong PIN for token {self._label} (the agent is already unlocked; the PIN was "
                               "not sent to the token)", tries_left=None)

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

    # ----- the rollback anchor (agent/daemon/rollback.py): a private data object, PIN needed ------------------
    def read_anchor(self, name: str) -> bytes | None:
        label = anchor_object.anchor_label(self._ns, name)
        return self._exclusive(lambda: anchor_object.read_anchor(self._local_session(), label), login=True)

    def write_anchor(self, name: str, value: bytes) -> None:
        label = anchor_object.anchor_label(self._ns, name)
        self._exclusive(lambda: anchor_object.write_anchor(self._local_session(), label, value), login=True)

    # ----- provisioning (used by keyagent init / migrate) ---------------------------------------------------
    @property
    def token_serial(self) -> str:
        return self._exclusive(lambda: self._serial)

    @property
    def token_label(self) -> str:
        return self._exclusive(lambda: self._label)

    def generate_identity(self) -> bytes:
        """Generate the identity key pair on the token (SENSITIVE, non-EXTRACTABLE, TOKEN); its public key."""
        pub = self._exclusive(lambda: keys.generate(self._local_session(), self._ik_ref), login=True)
        self._ik_pub = pub
        return pub

    def import_key(self, ref: KeyRef, secret: bytes) -> bytes:
        """Import a software scalar as a SENSITIVE, non-EXTRACTABLE token key.

        The token records it as imported: ALWAYS_SENSITIVE, NEVER_EXTRACTABLE and LOCAL are false, because the
        key existed outside the token before. It is protected from now on, not "never extractable".
        """
        if not secp256k1.valid_secret(secret):
            raise BackendConfigError("not a valid secp256k1 private key")
        pub65 = secp256k1.public_key(secp256k1.compress(keys.pub_of(secret))).format(compressed=False)
        pub = self._exclusive(lambda: keys.import_pair(self._local_session(), ref, secret, pub65), login=True)
        if ref == self._ik_ref:
            self._ik_pub = pub
        return pub

    def adopt(self, key_id: bytes | None, label: str | None) -> KeyRef:
        """Make an existing key pair (e.g. one made by ``pkcs11-tool --keypairgen``) the identity; its ref.

        Found by id, or by label when no id is given (then exactly one EC private key must carry it). The
        private half must be SENSITIVE and non-EXTRACTABLE unless the backend was built with allow_extractable.
        """

        def do() -> KeyRef:
            ref, pub = keys.adopt_pair(self._local_session(), key_id, label, self._label, self._allow_extractable)
            self._ik_ref, self._ik_pub = ref, pub
            return ref

        return self._exclusive(do, login=True)

    def destroy_key(self, ref: KeyRef) -> None:
        """Destroy a key pair by ref (provisioning rollback)."""
        self._exclusive(lambda: self._destroy(ref), login=True)

    def import_signed_prekey(self, version: int, secret: bytes) -> KeyOps:
        ref = spk_key_ref(self._ns, check_version(version))
        pub = self.import_key(ref, secret)
        self._spk_pubs[version] = pub
        return TokenKey(self, ref, pub)

    def private_key_attributes(self, ref: KeyRef | None = None) -> dict[str, bool]:
        """The protection attributes of a private key as the token reports them (for tests and ``status``)."""
        names = ("TOKEN", "PRIVATE", "SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE", "LOCAL",
                 "SIGN", "DERIVE")

        def do() -> dict[str, bool]:
            key = self._private(ref or self._ik_ref)
            return {n: bool(key[getattr(Attribute, n)]) for n in names}

        return self._exclusive(do, login=True)

    # ----- operations (keys.KeyRunner, used by TokenKey) ------------------------------------------------------
    def has_mechanism(self, mechanism: Mechanism) -> bool:
        """Whether the connected token lists ``mechanism`` (called on a worker, under the read lock)."""
        return mechanism in self._mechanisms

    def p11kit_ecdh_gap(self) -> str | None:
        """Which end of a p11-kit RPC is too old for ECDH (None: no p11-kit, or both ends new enough)."""
        return p11kit_ecdh_gap(self._lib)

    def missing_mechanism(self, mechanism: Mechanism) -> str:
        """The UNSUPPORTED message for a mechanism the token does not list (p11-kit: names both ends' versions)."""
        if mechanism == Mechanism.ECDH1_DERIVE:
            gap = p11kit_ecdh_gap(self._lib)
            if gap is not None:
                return gap
        return f"token {self._label} offers no {mechanism.name} mechanism"

    def run_with_key(self, ref: KeyRef, fn: Callable[[Any], T]) -> T:
        """Run ``fn(private key object)`` on a worker, reconnecting / logging in first when needed."""

        def run() -> T:
            while True:
                self._rw.acquire_read()
                gen = self._gen
                try:
                    ready = not self._broken and self._login is not None and not self._closed
                    dropped: keys.UnsupportedAndDropped | None = None
                    if ready:
                        loc = self._local
                        fresh = loc.gen == self._gen and loc.key_epoch == self._key_epoch
                        key = loc.keys.get(ref.id) if fresh else None
                        try:
                            if key is None:
                                key = self._private(ref)
                            return fn(key)
                        except keys.UnsupportedAndDropped as exc:
                            dropped = exc
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
                if dropped is not None:  # the refusal is the answer; reconnect before the next operation
                    self._locked_inline(lambda: self._mark_broken() if self._gen == gen else None)
                    raise dropped
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

    # ----- connection: (re)connect, probe, sessions; the self-healing lives here (write lock held) -----------
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
                reinitialize(self._lib)  # handles from before are void; the module re-reads its slots
            try:
                token = self._find_token()
            except px.PKCS11Error:
                if not first:
                    raise
                token = None
            if first and (token is None or not self._serial_ok(token)):
                # A token created or replugged after the module was loaded is only visible after C_Initialize
                # (and a removed one may still be listed until then).
                reinitialize(self._lib)
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
            return keys.find(s, self._ik_ref, ObjectClass.PUBLIC_KEY) is not None
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

    # ----- PIN (the checks and the C_Login itself are in backends.pkcs11.login) -------------------------------
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
        check_before_login(self._token_flags(), self._failures, self._serial, self._label, force=force,
                           from_cache=from_cache)
        # Hold no session while logging in, so that the one python-pkcs11 leaks on failure can be closed.
        self._drop_sessions(logout=False)
        session, session_is_login = open_login_session(
            self._lib, self._token, self._slot_id, pin, self._failures, self._serial, self._label)
        self._login = session
        if not session_is_login:
            self._sessions.append(session)
        self._failures.set(0, self._serial)
        self._pins.put(self._serial, pin)
        salt = os.urandom(16)
        self._pin_check = (salt, _pin_digest(salt, pin))
        try:
            self._check_identity()
        except BaseException:
            self._drop_sessions(logout=True)
            raise

    def _check_identity(self) -> None:
        """After each login: the identity private key is here, acceptable, and matches the configured public key."""
        if self._ik_pub is None:
            return  # provisioning: nothing configured yet
        s = self._local_session()
        priv = keys.find(s, self._ik_ref, ObjectClass.PRIVATE_KEY)
        if priv is None:
            raise IdentityChanged(f"token {self._label} holds no identity key with id {self._ik_ref.id.hex()}")
        keys.check_protection(priv, "identity", self._label, self._allow_extractable)
        keys.check_pair(priv, self._ik_pub, f"the identity key on token {self._label} is not the configured one")

    # ----- key handles (write or read lock held) --------------------------------------------------------------
    def _private(self, ref: KeyRef) -> Any:
        """This thread's handle on a private key (cached per session generation)."""
        s = self._local_session()
        key = keys.find(s, ref, ObjectClass.PRIVATE_KEY)
        if key is None:
            raise KeyNotFound(f"no private key with id {ref.id.hex()} on token {self._label}")
        if ref != self._ik_ref:
            keys.check_protection(key, f"key {ref.id.hex()}", self._label, self._allow_extractable)
        self._local.keys[ref.id] = key
        return key

    def _read_public(self, ref: KeyRef) -> bytes:
        return keys.read_public(self._local_session(), ref, self._label)

    def _destroy(self, ref: KeyRef) -> None:
        keys.destroy(self._local_session(), ref, self._label)
        self._key_epoch += 1  # drop cached handles in every worker
