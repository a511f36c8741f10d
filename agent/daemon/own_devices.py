"""Our own other installations (devices of the same identity) and the signed bundle we publish for them.

A device of ours becomes known from its bundle (on a message it sent, or imported from a contact card) and is
listed awaiting approval; approving it pairs it (it receives our messages and appears in our bundle, the newest 2
enabled ones), disabling it unpairs it. Our bundle is this installation's current SPK plus those devices, signed
with the identity key; it is re-signed only when its entries change or it is older than ``refresh_ns`` (a token
signature per message would be slow), and it rides on every message we send.

Not thread-safe: the session manager calls it under its state lock only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from agent.core import bundle as core_bundle
from agent.core.errors import ProtocolError
from agent.core.keyops import KeyOps
from agent.core.wire import pb

from .installations import MAX_INSTALLATIONS, PROTOCOL_VERSION, select_enabled
from .prekeys import SignedPrekeys
from .session_cache import SessionCache
from .store.rows import InstallationRecord, Op, PutInstallation

__all__ = ["OwnDevices", "DeviceInfo", "DeviceError"]


class DeviceError(ProtocolError):
    """A device request that cannot apply: unknown installation id, or our own installation."""


@dataclass(frozen=True)
class DeviceInfo:
    installation_id: str
    is_self: bool
    enabled: bool
    timestamp_ns: int
    spk_version: int


class OwnDevices:
    """Approval and listing of our own installations, and our bundle (self + up to 2 enabled own devices)."""

    def __init__(
        self,
        cache: SessionCache,
        prekeys: SignedPrekeys,
        ik: KeyOps,
        *,
        identity: bytes,
        installation_id: str,
        clock: Callable[[], int],
        refresh_ns: int,
    ) -> None:
        self._cache = cache
        self._prekeys = prekeys
        self._ik = ik
        self._identity = identity
        self._installation_id = installation_id
        self._clock = clock
        self._refresh_ns = refresh_ns
        self._bundle_cache: tuple[tuple[tuple[str, bytes, int, int], ...], int, pb.Bundle] | None = None
        self._last_signed: pb.Bundle | None = None  # survives invalidate(): what a locked agent still publishes

    def invalidate(self) -> None:
        """Our bundle changed (rotation, approval): sign a new one for the next message."""
        self._bundle_cache = None

    def _enabled(self, limit: int) -> list[InstallationRecord]:
        return select_enabled(self._cache.devices(self._identity).values(), self._identity,
                              exclude=self._installation_id, limit=limit)

    def _key(self) -> tuple[tuple[str, bytes, int, int], ...]:
        """Our bundle's entries: our current SPK and the newest enabled own devices. Remembered with the SPK
        record they were built with, in the session cache, which forgets them when an installation changes (every
        message we send asks, to know whether the signed bundle is still current)."""
        cur = self._prekeys.current()
        assert cur is not None  # the manager's upkeep always leaves a current SPK
        memo = self._cache.own_bundle_key
        if memo is not None and memo[0] is cur:
            return memo[1]
        entries = [(self._installation_id, cur.public, cur.version, PROTOCOL_VERSION)]
        for dev in self._enabled(MAX_INSTALLATIONS - 1):
            assert dev.spk is not None
            entries.append((dev.installation_id, dev.spk, dev.spk_version, dev.protocol_version))
        key = tuple(sorted(entries))
        self._cache.own_bundle_key = (cur, key)
        return key

    def cached_bundle(self) -> pb.Bundle | None:
        """The bundle :meth:`bundle` would return now if that needs no new signature (no token work), else None."""
        if self._prekeys.current() is None:
            return None
        cached = self._bundle_cache
        if cached is None or cached[0] != self._key() or self._clock() - cached[1] >= self._refresh_ns:
            return None
        return cached[2]

    def bundle(self) -> pb.Bundle:
        """Our signed bundle: self + up to 2 enabled own devices; re-signed when it changes or gets old."""
        key = self._key()
        now = self._clock()
        cached = self._bundle_cache
        if cached is not None and cached[0] == key and now - cached[1] < self._refresh_ns:
            return cached[2]
        b = core_bundle.sign_bundle(self._ik, {i: (spk, v, pv) for i, spk, v, pv in key}, now)
        self._bundle_cache = (key, now, b)
        self._last_signed = b
        return b

    def last_signed(self) -> pb.Bundle | None:
        """The newest bundle signed so far (possibly stale); never signs."""
        return self._last_signed

    def infos(self) -> list[DeviceInfo]:
        """Our installations: self first, then other devices newest first (enabled or awaiting approval)."""
        cur = self._prekeys.current()
        out = [DeviceInfo(self._installation_id, True, True, self._clock(), cur.version if cur else 0)]
        others = list(self._cache.devices(self._identity).values())
        others.sort(key=lambda i: (-i.timestamp_ns, i.installation_id))
        out += [DeviceInfo(i.installation_id, False, i.enabled, i.timestamp_ns, i.spk_version) for i in others]
        return out

    def set_enabled(self, installation_id: str, enabled: bool, ops: list[Op]) -> None:
        """Approve (pair) or disable (unpair) one of our other installations."""
        if installation_id == self._installation_id:
            raise DeviceError("this is our own installation")
        rec = self._cache.devices(self._identity).get(installation_id)
        if rec is None:
            raise DeviceError(f"unknown device {installation_id!r}")
        if rec.enabled != enabled:
            rec = replace(rec, enabled=enabled)
            self._cache.put_installation(rec)
            ops.append(PutInstallation(replace(rec)))
            self._bundle_cache = None  # our bundle changes and rides on the next messages
