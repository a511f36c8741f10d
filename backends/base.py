"""The backend interface: the identity key as a KeyOps, plus the signed-prekey lifecycle and lock state.

The daemon holds exactly one Backend (made by :func:`backends.open_backend` from the home's config). The KeyOps
objects it hands out are thin handles: their ``public_key()`` never touches the token, and ``sign``/``dh``
raise a :mod:`backends.errors` error (TokenAbsent, PinRequired, PassphraseRequired...) instead of blocking on
a user. Signed prekeys are addressed by their version number (a positive int, 1 for the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from agent.core.keyops import KeyOps

__all__ = ["Backend", "AnchorHolder", "BackendStatus", "SignedPrekeyInfo", "SecretSource", "MAX_SPK_VERSION"]

#: SPK versions are stored as 4-byte big-endian numbers in token key ids.
MAX_SPK_VERSION = 0xFFFFFFFF

#: A callable the backend asks for a PIN or passphrase when it needs one, given a short human description of
#: what it is for (token label/serial or key-file path). Returning None means "no secret available now"; the
#: backend then raises PinRequired/PassphraseRequired. It is called at most once per operation (no retries).
SecretSource = Callable[[str], "str | None"]


@dataclass(frozen=True)
class SignedPrekeyInfo:
    """One signed prekey as the backend holds it (timestamps and signatures live in the daemon's store)."""

    version: int
    public_key: bytes  # 33-byte compressed


@dataclass(frozen=True)
class BackendStatus:
    """What ``keyagent status`` shows; never contains a secret."""

    kind: str  # "pkcs11" or "software"
    present: bool  # token reachable / key file readable
    unlocked: bool
    identity_public_key: bytes
    detail: str  # token label+serial or key-file path
    pin_failures: int = 0  # consecutive failures counted by the agent (pkcs11 only)


@runtime_checkable
class Backend(Protocol):
    """Identity key, signed prekeys and their lifecycle, behind one lock state."""

    kind: str

    def identity(self) -> KeyOps:
        """The identity key (its public key is known even while locked)."""
        ...

    def create_signed_prekey(self, version: int) -> KeyOps:
        """Generate SPK ``version`` in the backend; KeyExists if that version is already there."""
        ...

    def signed_prekey(self, version: int) -> KeyOps:
        """The SPK with this version; KeyNotFound if it does not exist (e.g. destroyed)."""
        ...

    def list_signed_prekeys(self) -> list[SignedPrekeyInfo]:
        """All SPKs present, ordered by version."""
        ...

    def destroy_signed_prekey(self, version: int) -> None:
        """Destroy SPK ``version`` for good (forward secrecy); KeyNotFound if absent."""
        ...

    def status(self) -> BackendStatus:
        """Presence and lock state, cheap enough for every ``status`` request."""
        ...

    def lock(self) -> None:
        """Forget the PIN/passphrase and the login; sign/dh raise a Locked error until unlock."""
        ...

    def unlock(self, secret: str, *, force: bool = False) -> None:
        """Unlock with a PIN or passphrase. One attempt, never retried; ``force`` allows a final PIN try."""
        ...

    def release(self) -> None:
        """Let other programs use the token (SIGHUP, ``keyagent release``): close our sessions and log out, but keep
        the PIN cached within its TTL so the next operation logs in again on its own."""
        ...

    def close(self) -> None:
        """Release the token or key material; the object is unusable afterwards."""
        ...


@runtime_checkable
class AnchorHolder(Protocol):
    """A backend that keeps small values outside the host's disk (a token): where the daemon's rollback anchor
    lives (:mod:`agent.daemon.rollback`). Both need the PIN; values are at most 64 bytes."""

    def read_anchor(self, name: str) -> bytes | None:
        """The value stored under ``name``, or None."""
        ...

    def write_anchor(self, name: str, value: bytes) -> None:
        """Store ``value`` under ``name`` (one token write)."""
        ...
