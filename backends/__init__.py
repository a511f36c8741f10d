"""Key backends: implementations of :class:`agent.core.keyops.KeyOps` (PKCS#11 token, software key file).

Entry points for the rest of the agent:

* :func:`backends.home.open_backend` (re-exported here) builds the home's :class:`backends.base.Backend` from
  ``<home>/config.json`` (schema in :mod:`backends.home`); :func:`load_config` reads that file.
* :func:`provision_identity` creates the identity key + first signed prekey and writes the config
  (``keyagent init``; ``import_secret`` for a recovery-phrase import); :func:`migrate_to_token` moves a software
  identity onto a token (``keyagent migrate``).
* :mod:`backends.errors`: typed errors, each with a stable ``code`` for the wire.

Only this package imports python-pkcs11, and only :mod:`backends.pkcs11` calls it (the backend from its worker
thread).
"""

from agent.core.keyops import KeyOps as KeyOps
from backends.base import Backend as Backend
from backends.base import BackendStatus as BackendStatus
from backends.base import SignedPrekeyInfo as SignedPrekeyInfo
from backends.home import load_config as load_config
from backends.home import migrate_to_token as migrate_to_token
from backends.home import open_backend as open_backend
from backends.home import provision_identity as provision_identity
from backends.home import write_config as write_config

__all__ = [
    "KeyOps",
    "Backend",
    "BackendStatus",
    "SignedPrekeyInfo",
    "open_backend",
    "load_config",
    "write_config",
    "provision_identity",
    "migrate_to_token",
]
