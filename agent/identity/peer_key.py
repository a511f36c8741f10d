"""A peer key sent to the socket as text: the daemon's rule for telling a written key from raw key bytes."""

from __future__ import annotations

__all__ = ["identity_text_key"]


def identity_text_key(data: bytes) -> bytes | None:
    """For a socket field that takes a peer key: the 33-byte key of identity *text*, or None for raw key bytes.

    Raw keys are 33 or 65 bytes; no written form (0x04… 132, hex 66/68, zQ3… 49, links 70+ characters) has
    either length, so the two cannot be confused. Printable ASCII of any other length is parsed with
    :func:`agent.core.identity.parse_peer_identity` (BadIdentity, code BAD_IDENTITY, when it is no Status key);
    None means "treat as raw bytes" (the caller's own length/curve checks then give BAD_REQUEST).
    """
    if len(data) in (33, 65) or not data.strip() or not data.isascii():
        return None
    text = bytes(data).decode("ascii")
    if not text.strip().isprintable():
        return None
    from agent.core.identity import parse_peer_identity

    return parse_peer_identity(text)
