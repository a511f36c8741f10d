"""PKCS#11 backend: the identity key and signed prekeys live on a token as non-extractable secp256k1 keys.

One concern per module (import them directly; this package re-exports nothing):

* :mod:`backends.pkcs11.lib`: every reliance on python-pkcs11 0.10.1 internals (OS-locking initialiser,
  re-initialisation, C_CloseAllSessions through ctypes), so an upgrade touches one file.
* :mod:`backends.pkcs11.worker`: the worker threads that own every PKCS#11 call, and the reader/writer lock.
* :mod:`backends.pkcs11.keys`: key refs, keygen/import/adopt templates and checks, the KeyOps handle.
* :mod:`backends.pkcs11.login`: the checks before a PIN is sent, the one C_Login, the PIN failure file.
* :mod:`backends.pkcs11.backend`: :class:`Pkcs11Backend`, tying them together; connect, reconnect and
  self-healing live there and nowhere else.
* :mod:`backends.pkcs11.inventory`: read-only slot/token/key listing for ``keyagent devices`` and ``doctor``.

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
