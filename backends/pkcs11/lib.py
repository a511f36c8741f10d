"""Every reliance on python-pkcs11 0.10.1 internals, in one file, so that an upgrade rereads this file only.

The version is pinned in pyproject.toml because of what is here:

* ``pkcs11._pkcs11.lib`` is subclassed: ``initialize`` is a cpdef method, so overriding it from Python works, and
  it is how the module gets ``CKF_OS_LOCKING_OK`` (python-pkcs11 always passes ``C_Initialize(NULL)``, which
  makes SoftHSM2 switch its own mutexes off).
* ``lib.so`` (the module path), ``lib.initialized`` and ``lib.reinitialize()`` are read/called directly.
* ``C_Initialize``, ``C_Finalize`` and ``C_CloseAllSessions`` go through ctypes: python-pkcs11 has no wrapper
  for the last, and ``Token.open(user_pin=wrong)`` leaks the session it opened.
* python-pkcs11 reports a dlopen failure as a bare ``PKCS11Error`` whose text contains "while loading".
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import pkcs11
import pkcs11.exceptions as px
from pkcs11 import _pkcs11

from backends.errors import BackendConfigError, TokenAbsent

__all__ = ["load_lib", "reinitialize", "close_all_sessions", "is_pkcs11_module", "p11kit_ecdh_gap"]


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


def reinitialize(lib: Any) -> None:
    """C_Finalize + C_Initialize: the only way a module notices a token that left and came back."""
    if isinstance(lib, _LockingLib):
        lib.reinitialize()
    elif lib.initialized:
        lib.reinitialize()
    else:  # a previous reinitialize failed half-way (finalised, init raised): just initialise
        lib.initialize()


def close_all_sessions(lib: Any, slot_id: int) -> None:
    """C_CloseAllSessions through ctypes: python-pkcs11 has no wrapper, and it leaks a session per failed login.

    Closing it matters: a later (SO) login would otherwise be blocked by a session nobody can reach
    (pkcs11-probe.md §9).
    """
    try:
        ctypes.CDLL(lib.so).C_CloseAllSessions(ctypes.c_ulong(slot_id))
    except OSError:  # pragma: no cover - the module was loaded, so dlopen cannot fail now
        pass


def is_pkcs11_module(module: str) -> bool:
    """dlopen the file and look for C_GetFunctionList; OSError when it is no shared library at all.

    Done before python-pkcs11 loads it, because python-pkcs11 turns a non-library file into an opaque PKCS11Error.
    """
    return hasattr(ctypes.CDLL(module), "C_GetFunctionList")


class _CKInfo(ctypes.Structure):
    _fields_ = [("cryptoki_major", ctypes.c_ubyte), ("cryptoki_minor", ctypes.c_ubyte),
                ("manufacturer", ctypes.c_char * 32), ("flags", ctypes.c_ulong),
                ("description", ctypes.c_char * 32), ("lib_major", ctypes.c_ubyte), ("lib_minor", ctypes.c_ubyte)]


class _FunctionListHead(ctypes.Structure):
    """The start of CK_FUNCTION_LIST: a CK_VERSION, then the entry points in the standard's order."""

    _fields_ = [("version", ctypes.c_ubyte * 2), ("C_Initialize", ctypes.c_void_p),
                ("C_Finalize", ctypes.c_void_p), ("C_GetInfo", ctypes.c_void_p)]


_GET_INFO = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.POINTER(_CKInfo))
_INIT_FINI = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)


def p11kit_ecdh_gap(lib: Any) -> str | None:
    """Why ECDH1_DERIVE cannot cross p11-kit's RPC here, naming the versions; None if ``lib`` is no p11-kit client
    or both ends are >= 0.25.

    p11-kit serialises CK_ECDH1_DERIVE_PARAMS only from 0.25.0 on, and BOTH ends need it (measured: 0.24.1 client
    + 0.25.5 server fails, and the reverse). Neither end reports its version, but each shows it: a 0.25 client
    module exports C_GetInterface (0.24.1's exports only C_GetFunctionList), and the C_GetInfo it forwards from
    a 0.25 server says PKCS#11 3.0 (a 0.24 server says 2.40, whatever module it serves).
    """
    try:
        so = ctypes.CDLL(lib.so)
        # C_GetInfo now, through the function list (0.24.1's client exports nothing else): python-pkcs11 reads
        # it once at load, and the server behind the socket may have changed since. p11-kit's client hands out a
        # fresh, uninitialised instance per C_GetFunctionList (its own connection): initialise it, ask, finalise
        # it again; python-pkcs11's instance is untouched (measured with 0.24.1 and 0.25.5). A module with one
        # shared instance answers ALREADY_INITIALIZED and is not finalised.
        fns = ctypes.POINTER(_FunctionListHead)()
        if so.C_GetFunctionList(ctypes.byref(fns)) != 0 or not fns:
            return None
        rv = _INIT_FINI(fns.contents.C_Initialize)(None)
        if rv not in (0, _CKR_CRYPTOKI_ALREADY_INITIALIZED):
            return None
        info = _CKInfo()
        try:
            if (_GET_INFO(fns.contents.C_GetInfo)(ctypes.byref(info)) != 0
                    or info.manufacturer.rstrip(b" \0") != b"PKCS#11 Kit"):
                return None
        finally:
            if rv == 0:
                _INIT_FINI(fns.contents.C_Finalize)(None)
        client_new = hasattr(so, "C_GetInterface")
        server_new = (info.cryptoki_major, info.cryptoki_minor) >= (3, 0)
    except (OSError, AttributeError):
        return None
    if client_new and server_new:
        return None
    ends = [f"client module {lib.so} is p11-kit " + ("0.25 or newer" if client_new else "0.24 or older"),
            "the p11-kit server is " + ("0.25 or newer" if server_new else "0.24 or older (it reports PKCS#11 2.40)")]
    return ("ECDH1_DERIVE does not cross p11-kit's RPC here: " + "; ".join(ends)
            + ". Both ends need p11-kit >= 0.25.0 (X3DH and Waku need it; signing works without)")
