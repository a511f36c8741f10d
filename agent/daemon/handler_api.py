"""What every request handler shares: who asked, what a handler returns, and the errors of the service edge.

:mod:`agent.daemon.service` dispatches; the handler modules (``service.py`` itself, ``waku_service.py``,
``devices_service.py``) build on this module only, so none of them needs to import another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from agent.core import secp256k1
from agent.core.error_codes import CodedError, ErrorCode
from agent.core.errors import MalformedKey
from agent.core.keys import require_compressed
from agent.daemon.config import AgentConfig
from agent.daemon.peercred import PeerCred
from agent.pb.keyagent import agent_pb2 as pb
from backends.base import Backend

__all__ = ["BadRequest", "Denied", "ClientContext", "Outcome", "Handler", "HandlerHost", "peer_public_key"]


class BadRequest(CodedError, ValueError):
    """A request field is malformed or out of range."""

    code = ErrorCode.BAD_REQUEST


class Denied(CodedError, PermissionError):
    """Policy forbids this request for this client."""

    code = ErrorCode.DENIED


@dataclass(frozen=True)
class ClientContext:
    """Who sent a request: kernel credentials, executable (advisory), connection number, owner or not."""

    cred: PeerCred
    exe: str
    conn: int
    owner: bool


@dataclass
class Outcome:
    """What a handler returns: the response body and the audit fields it adds."""

    response: pb.Response
    key: str = ""
    peer: str = ""
    detail: str = ""


Handler = Callable[[pb.Request, ClientContext], Outcome]


class HandlerHost(Protocol):
    """What handler modules need from the service that registers them."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def backend(self) -> Backend: ...

    def sessions(self) -> Any: ...


def peer_public_key(data: bytes, what: str) -> bytes:
    """A peer key sent as 33/65 raw bytes or as Status key text (0x04…, hex, zQ3…, link) → 33 bytes compressed."""
    if len(data) == 33:  # the usual form (not text: no written form has 33 characters); its validity is remembered
        try:
            return require_compressed(data, what)
        except (MalformedKey, ValueError) as exc:
            raise BadRequest(f"{what} is not a valid secp256k1 public key") from exc
    from agent.identity.peer_key import identity_text_key

    text_key = identity_text_key(data)  # BAD_IDENTITY if it is text but not a valid Status key
    if text_key is not None:
        return text_key
    if len(data) != 65:
        raise BadRequest(f"{what} must be a 33- or 65-byte secp256k1 public key or a Status key text")
    try:
        return secp256k1.compress(bytes(data))
    except (MalformedKey, ValueError) as exc:
        raise BadRequest(f"{what} is not a valid secp256k1 public key") from exc
