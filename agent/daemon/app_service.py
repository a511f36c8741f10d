"""The agent's Status application-message requests: ``app_wrap`` and ``app_unwrap``.

The rules live in :mod:`agent.core.app_message`; this module maps them to the socket API. ``app_wrap`` is the
one way a client gets the identity key to sign something of its choosing, and the agent computes the hash
itself, so only a payload it has checked (a well-formed message of a known type that cannot stand for a bundle
or a Waku envelope) is ever signed. ``app_unwrap`` only verifies (no secret), so it works while locked.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.core import app_message, secp256k1
from agent.daemon.handler_api import BadRequest, ClientContext, HandlerHost, Outcome
from agent.pb.keyagent import agent_pb2 as pb

__all__ = ["app_handlers"]


def app_handlers(service: HandlerHost) -> dict[str, Callable[[pb.Request, ClientContext], Outcome]]:
    """The two handlers, bound to ``service``'s backend."""

    def wrap(req: pb.Request, ctx: ClientContext) -> Outcome:
        r = req.app_wrap
        name = app_message.type_name(r.type) or str(r.type)
        data, mid = app_message.wrap(service.backend.identity(), bytes(r.payload), r.type)
        return Outcome(pb.Response(app_wrap=pb.AppWrapResponse(message=data, message_id=mid)), key="identity",
                       detail=f"type={name}")

    def unwrap(req: pb.Request, ctx: ClientContext) -> Outcome:
        if not req.app_unwrap.message:
            raise BadRequest("message is empty")
        msg = app_message.unwrap(bytes(req.app_unwrap.message))
        out = pb.AppUnwrapResponse(signer=msg.signer, type=msg.type, type_name=app_message.type_name(msg.type),
                                   payload=msg.payload, message_id=msg.message_id)
        return Outcome(pb.Response(app_unwrap=out), peer=secp256k1.compress(msg.signer).hex(),
                       detail=f"type={out.type_name or msg.type}")

    return {"app_wrap": wrap, "app_unwrap": unwrap}
