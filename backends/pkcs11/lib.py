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

__all__ = ["load_lib", "reinitialize", "close_all_sessions", "is_pkcs11_module"]


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
