"""Typed errors of the protocol core, named for what the caller should do about them."""

from __future__ import annotations

from agent.core.error_codes import CodedError, ErrorCode

__all__ = [
    "ProtocolError",
    "MalformedMessage",
    "MalformedKey",
    "BadSignature",
    "IdentityMismatch",
    "EmptyBundle",
    "BadBundle",
    "NonCanonicalSignature",
    "DecryptFailed",
    "TooManySkipped",
    "MessageKeyGone",
    "UnknownSession",
    "InvalidState",
    "BadIdentity",
    "MalformedEnvelope",
    "WireTooShort",
    "BadEphemeralKey",
]


class ProtocolError(CodedError, ValueError):
    """Base of every error the core raises for bad input; state is never changed when one is raised."""

    code = ErrorCode.BAD_REQUEST


class MalformedMessage(ProtocolError):
    """Bytes that do not parse as the expected wire message: drop them."""


class MalformedKey(ProtocolError):
    """A public key or private scalar that is not a valid secp256k1/X25519 value: reject the input."""


class BadSignature(ProtocolError):
    """A signature that does not verify or cannot be recovered: do not trust the signed data."""

    code = ErrorCode.BAD_SIGNATURE


class IdentityMismatch(BadSignature):
    """The signature is valid but by another key than the claimed identity."""


class EmptyBundle(ProtocolError):
    """A bundle without any signed prekey: nothing to start a session with."""


class BadBundle(ProtocolError):
    """A validly signed bundle we refuse to store (stale or digit-shifted version/timestamp, too many or too
    long installation ids, a high-S twin): ask the peer for its current bundle."""

    code = ErrorCode.BAD_BUNDLE


class NonCanonicalSignature(BadBundle, BadSignature):
    """A high-S twin of a valid signature: it verifies, but go-ethereum never makes one (answered BAD_BUNDLE)."""

    code = ErrorCode.BAD_BUNDLE


class DecryptFailed(ProtocolError):
    """Authentication of a ciphertext failed (wrong key, tampering, or not for us)."""

    code = ErrorCode.DECRYPT_FAILED


class TooManySkipped(DecryptFailed):
    """The header asks to skip more message keys than the profile allows (MaxSkip)."""


class MessageKeyGone(DecryptFailed):
    """An old message whose key was already deleted (confirmed or pruned): it cannot be read again."""


class UnknownSession(ProtocolError):
    """No session matches the message: the peer should be sent our bundle."""

    code = ErrorCode.NO_SESSION


class InvalidState(ProtocolError):
    """A serialised state that is corrupt or of an unknown version."""


class BadIdentity(ProtocolError):
    """Text that is not a Status peer identity (0x04… key, compressed hex, zQ3… key or status.app link)."""

    code = ErrorCode.BAD_IDENTITY


class MalformedEnvelope(MalformedMessage):
    """A decrypted Waku payload envelope (26/WAKU2-PAYLOAD) whose flags, size field or length do not add up."""


class WireTooShort(MalformedMessage):
    """A Waku payload wire shorter than the ECIES or AES-GCM framing around any envelope: drop it unread."""


class BadEphemeralKey(MalformedMessage):
    """An ECIES wire whose ephemeral key R is not an uncompressed secp256k1 point; rejected before any ECDH."""
