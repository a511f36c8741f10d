"""The agent's durable state, sealed at rest, with group commit; one interface, two engines.

* :mod:`.rows` - the row codec both engines share: records, write operations, the token-derived data key,
  sealing, and the neutral row form. The database only ever sees ciphertext and metadata.
* :mod:`.group_commit` - many requests' batches, one durable commit, monotone durability.
* :mod:`.api` - :class:`StateStore`, what the session manager uses.
* :mod:`.sqlite` - the embedded default: one SQLite file per home.

What lives in a store: our installation id, our signed-prekey (SPK) metadata, every installation we know (our
own other devices and our peers'), and the Double Ratchet sessions (ratchet state with its kept message keys,
the shared key, the sending-chain high-water mark).
"""

from __future__ import annotations

from .api import StateStore
from .rows import (
    DeleteInstallation,
    DeletePeerReply,
    DeleteSession,
    DeleteStranger,
    InstallationRecord,
    Op,
    OwnSpkRecord,
    PutInstallation,
    PutMeta,
    PutOwnSpk,
    PutPeerReply,
    PutSession,
    PutStranger,
    SessionRecord,
    SessionSummary,
    StoreCorrupt,
    StoreError,
    StoreFailed,
    StoreKeyMismatch,
    StoreUnavailable,
    StoreVersionTooNew,
)
from .sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore

#: the embedded store under its historical name
Store = SqliteStore

__all__ = [
    "Store",
    "SqliteStore",
    "StateStore",
    "StoreError",
    "StoreFailed",
    "StoreUnavailable",
    "StoreKeyMismatch",
    "StoreVersionTooNew",
    "StoreCorrupt",
    "SessionRecord",
    "SessionSummary",
    "InstallationRecord",
    "OwnSpkRecord",
    "PutSession",
    "PutInstallation",
    "PutOwnSpk",
    "PutMeta",
    "PutPeerReply",
    "DeletePeerReply",
    "DeleteInstallation",
    "PutStranger",
    "DeleteStranger",
    "DeleteSession",
    "Op",
    "SCHEMA_VERSION",
    "MIGRATIONS",
]
