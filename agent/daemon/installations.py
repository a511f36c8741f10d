"""Pure multi-device rules (no I/O, no clock reads): which installations, which session, when to rotate or reply.

Kept apart from :mod:`agent.daemon.sessions` so each rule of the spec's "Session management" section and of
status-go's behaviour (status-go-facts §6) is one small function with its own unit test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from agent.core.errors import BadBundle
from agent.core.wire import pb

from .store.rows import InstallationRecord, SessionRecord

__all__ = [
    "MAX_INSTALLATIONS",
    "MAX_BUNDLE_INSTALLATIONS",
    "MAX_STORED_INSTALLATIONS",
    "MAX_INSTALLATION_ID",
    "MAX_VERSION_JUMP",
    "MAX_FUTURE_NS",
    "TIMESTAMP_FLOOR_NS",
    "check_bundle_shape",
    "PROTOCOL_VERSION",
    "BundleUpdate",
    "new_installation_id",
    "is_installation_id",
    "select_enabled",
    "apply_bundle",
    "choose_session",
    "incoming_supersedes",
    "rotation_due",
    "destroy_due",
    "reply_allowed",
]

#: At most 3 installations per identity take part (self included): status-go ``MaxInstallations``.
MAX_INSTALLATIONS = 3
#: A bundle names at most this many installations: status-go signs self + ``MaxInstallations - 1`` own devices.
MAX_BUNDLE_INSTALLATIONS = MAX_INSTALLATIONS
#: Installations kept per identity (status-go keeps all but uses the newest 3); past it new ones are not recorded,
#: so one identity cannot grow the store without bound.
MAX_STORED_INSTALLATIONS = 16
#: Installation ids are UUIDs (36 characters) in status-go; longer ids are refused.
MAX_INSTALLATION_ID = 36
#: A signed-prekey version may move up by at most this much at once (status-go adds 1 per rotation).
MAX_VERSION_JUMP = 1000
#: A bundle timestamp may be at most this far ahead of our clock (clock skew between devices).
MAX_FUTURE_NS = 24 * 3600 * 10**9
#: 2017-01-01 in ns: no genuine Status bundle is older; a timestamp below it once the clock is past it has lost
#: digits (moved into the last version of the signature material, which has no separators).
TIMESTAMP_FLOOR_NS = 1_483_228_800 * 10**9
#: Our client protocol version, put in ``SignedPreKey.protocol_version`` (status-go ``protocolVersion``).
PROTOCOL_VERSION = 1


def new_installation_id(rng: Callable[[int], bytes]) -> str:
    """A lowercase UUID v4 with hyphens from injected randomness, like status-go ``uuid.New().String()``."""
    return str(uuid.UUID(bytes=rng(16), version=4))


def is_installation_id(text: str) -> bool:
    """Installation ids are opaque strings on the wire (status-go makes UUIDs); we insist on printable ASCII, at
    most a UUID's length, not ``"none"``."""
    return 0 < len(text) <= MAX_INSTALLATION_ID and text.isascii() and text.isprintable() and text != "none"


def check_bundle_shape(bundle: pb.Bundle) -> None:
    """Refuse (BadBundle) a bundle no status-go client makes, before its signature is even checked: more than
    ``MAX_BUNDLE_INSTALLATIONS`` entries, or an installation id that is not a short printable id."""
    n = len(bundle.signed_pre_keys)
    if n > MAX_BUNDLE_INSTALLATIONS:
        raise BadBundle(f"bundle names {n} installations; at most {MAX_BUNDLE_INSTALLATIONS} are accepted")
    for iid in bundle.signed_pre_keys:
        if not is_installation_id(iid):
            raise BadBundle(f"installation id {iid[:40]!r} is not at most {MAX_INSTALLATION_ID} printable characters")


def select_enabled(
    installations: Iterable[InstallationRecord], identity: bytes, *, exclude: str | None, limit: int
) -> list[InstallationRecord]:
    """Enabled installations of ``identity`` with a prekey, newest bundle timestamp first, at most ``limit``.

    status-go: ``WHERE enabled AND identity=? ORDER BY timestamp DESC LIMIT n`` ("last activity" is the
    newest bundle timestamp seen). Ties break on the id so the choice is deterministic.
    """
    rows = [
        i
        for i in installations
        if i.identity == identity and i.enabled and i.installation_id != exclude and i.spk is not None
    ]
    rows.sort(key=lambda i: (-i.timestamp_ns, i.installation_id))
    return rows[: max(0, limit)]


@dataclass(frozen=True)
class BundleUpdate:
    """What one verified bundle changes: records to write and installations whose SPK version went up."""

    records: tuple[InstallationRecord, ...]
    rekeyed: tuple[str, ...]


def apply_bundle(
    existing: Mapping[tuple[bytes, str], InstallationRecord],
    identity: bytes,
    bundle: pb.Bundle,
    *,
    our_identity: bytes,
    our_installation_id: str,
    now_ns: int,
) -> BundleUpdate:
    """Merge a *verified* bundle of ``identity`` into the known installations, or refuse all of it (BadBundle).

    Rules (status-go-facts §6): the timestamp only moves forward; a higher SPK version replaces the prekey
    and marks the installation for re-keying; a lower or equal version never replaces it; a peer's new
    installation starts enabled, one of our own starts disabled until the user approves it (pairing); our own
    installation id is never recorded.

    Acceptance (the signature material ``… ‖ decimal(version) ‖ decimal(ts)`` has no separators, so digits can
    move between the last version and the timestamp under the same signature): the timestamp may not be more
    than ``MAX_FUTURE_NS`` ahead of ``now_ns`` nor, once the clock is past 2017, before 2017 (a 19-digit
    nanosecond timestamp that lost a digit); a higher version is taken only with a timestamp not older than the
    stored one and at most ``MAX_VERSION_JUMP`` above it. status-go signs every bundle afresh with
    ``time.Now().UnixNano()`` and raises its version by one per rotation, so its genuine bundles always pass.
    """
    check_bundle_shape(bundle)
    ts = int(bundle.timestamp)
    if ts > now_ns + MAX_FUTURE_NS:
        raise BadBundle("bundle timestamp is implausibly far in the future")
    if ts < TIMESTAMP_FLOOR_NS <= now_ns:
        raise BadBundle("bundle timestamp is before 2017 (digits moved into the version?)")
    out: list[InstallationRecord] = []
    rekeyed: list[str] = []
    new_ids: list[str] = []
    for iid in sorted(bundle.signed_pre_keys.keys()):
        if identity == our_identity and iid == our_installation_id:
            continue
        spk = bundle.signed_pre_keys[iid]
        cur = existing.get((identity, iid))
        if cur is None:
            new_ids.append(iid)
            out.append(
                InstallationRecord(
                    identity=identity,
                    installation_id=iid,
                    spk=bytes(spk.signed_pre_key),
                    spk_version=int(spk.version),
                    protocol_version=int(spk.protocol_version),
                    timestamp_ns=ts,
                    enabled=identity != our_identity,
                    first_seen_ns=now_ns,
                )
            )
            continue
        new = cur
        if cur.spk is None or spk.version > cur.spk_version:
            if cur.spk is not None and ts < cur.timestamp_ns:
                raise BadBundle(f"installation {iid!r}: a higher prekey version with an older timestamp")
            if cur.spk is not None and spk.version - cur.spk_version > MAX_VERSION_JUMP:
                raise BadBundle(f"installation {iid!r}: prekey version jumps by more than {MAX_VERSION_JUMP}")
            new = replace(new, spk=bytes(spk.signed_pre_key), spk_version=int(spk.version))
            if cur.spk is not None:
                rekeyed.append(iid)
        if spk.protocol_version > new.protocol_version:  # never lowered
            new = replace(new, protocol_version=int(spk.protocol_version))
        if ts > new.timestamp_ns:
            new = replace(new, timestamp_ns=ts)
        if new != cur:
            out.append(new)
    room = MAX_STORED_INSTALLATIONS - sum(1 for (ident, _iid) in existing if ident == identity)
    if len(new_ids) > room:
        # the identity already names as many installations as we keep: the new ones are not recorded (the known
        # ones, which the bundle may still update, stay)
        out = [r for r in out if r.installation_id not in new_ids]
    return BundleUpdate(tuple(out), tuple(rekeyed))


def choose_session(candidates: Sequence[SessionRecord]) -> tuple[SessionRecord | None, list[SessionRecord]]:
    """Pick the sending session among the live ones for one installation; return ``(chosen, to_expire)``.

    The spec's rule for concurrent sessions: the one whose shared key is first in byte order is used and the
    other expires. Expired sessions are never chosen (they still decrypt late messages).
    """
    live = [s for s in candidates if not s.expired]
    if not live:
        return None, []
    live.sort(key=lambda s: s.sk)
    return live[0], live[1:]


def incoming_supersedes(existing: SessionRecord) -> bool:
    """Does a new incoming X3DH session replace ``existing`` (rather than compete with it by SK order)?

    Two sessions are *concurrent* only when both sides initiated before either heard back: our live session
    is one we initiated and is still unconfirmed. Any other live session (confirmed, or one where we were
    the responder) means the peer deliberately started over - lost state, restored account - so the newer
    session wins; keeping the old one by SK order would leave us sending on a session the peer no longer has.
    """
    return not (existing.initiator and not existing.confirmed)


def rotation_due(created_ns: int, now_ns: int, period_ns: int) -> bool:
    """Rotate the SPK once it is ``period_ns`` old, measured from its creation (status-go: 24 h)."""
    return now_ns - created_ns >= period_ns


def destroy_due(expired_ns: int | None, now_ns: int, grace_ns: int) -> bool:
    """An expired SPK stays usable for late X3DH messages for ``grace_ns``, then is destroyed on the token."""
    return expired_ns is not None and now_ns - expired_ns >= grace_ns


def reply_allowed(last_ns: int | None, now_ns: int, interval_ns: int) -> bool:
    """At most one bundle reply per peer per ``interval_ns`` (the first one is always allowed).

    status-go's ``ShouldAdvertiseBundle`` has this test inverted (``now - lastAck < 2h``), so it never fires
    for a new peer; this is the intended rule.
    """
    return last_ns is None or now_ns - last_ns >= interval_ns
