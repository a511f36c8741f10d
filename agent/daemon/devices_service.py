"""The agent's device and public-message requests: ``devices``, ``set_device``, ``public_message``.

The rules live in :mod:`agent.daemon.sessions` (``devices()``, ``approve_device()``, ``disable_device()``,
``public_message()``) and :mod:`agent.daemon.installations`; this module only maps them to the socket API:

* **devices** lists our installations: ourselves first, then our other devices (seen in bundles signed by our
  identity key) newest first. ``active`` marks the ones that actually take part - ourselves and the newest
  ``MAX_INSTALLATIONS - 1`` enabled others - because approving a fourth device does not put it in the bundle
  (status-go's limit of 3 installations per identity, self included); the user should see that.
* **set_device** approves or disables one of our own devices and answers with the resulting bundle, so a caller
  can publish it at once (it also rides on every message we send from now on).
* **public_message** wraps a payload *unencrypted* in ``ProtocolMessage.public_message``. It is a separate
  request type (not a flag on ``encrypt``) so that no caller can send a secret in the clear by a wrong default,
  and the audit line names it ``public_message`` with ``detail=unencrypted``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, cast

from agent.daemon.handler_api import BadRequest, ClientContext, HandlerHost, Outcome
from agent.daemon.installations import MAX_INSTALLATIONS, is_installation_id
from agent.daemon.own_devices import DeviceError, DeviceInfo
from agent.pb.keyagent import agent_pb2 as pb

__all__ = ["DevicesLike", "DeviceHandlers", "device_handlers", "device_rows", "MAX_PUBLIC_PAYLOAD"]

#: Largest public payload accepted (the request frame cap is the real bound; this keeps the reply under it).
MAX_PUBLIC_PAYLOAD = 200 * 1024


class DevicesLike(Protocol):
    """What these handlers need from :class:`agent.daemon.sessions.SessionManager`."""

    installation_id: str

    def devices(self) -> Sequence[DeviceInfo]: ...
    def approve_device(self, installation_id: str) -> None: ...
    def disable_device(self, installation_id: str) -> None: ...
    def our_bundle(self) -> bytes: ...
    def public_message(self, payload: bytes) -> bytes: ...



def device_rows(devices: Sequence[DeviceInfo]) -> list[pb.DeviceInfo]:
    """The wire rows of ``SessionManager.devices()`` with ``active`` computed as the bundle does.

    ``devices()`` lists self first and the others newest first (ties by id), the same order
    :func:`agent.daemon.installations.select_enabled` uses, so the first ``MAX_INSTALLATIONS - 1`` enabled
    others are exactly the ones in our bundle.
    """
    rows: list[pb.DeviceInfo] = []
    others_active = 0
    for d in devices:
        active = d.is_self
        if not d.is_self and d.enabled and others_active < MAX_INSTALLATIONS - 1:
            active = True
            others_active += 1
        rows.append(pb.DeviceInfo(installation_id=d.installation_id, is_self=d.is_self, enabled=d.enabled,
                                  last_activity_ns=max(0, d.timestamp_ns), spk_version=max(0, d.spk_version),
                                  active=active))
    return rows


class DeviceHandlers:
    """The three handlers of one :class:`Service` (they run in its worker threads)."""

    def __init__(self, service: "HandlerHost") -> None:
        self._service = service

    def handlers(self) -> dict[str, Callable[[pb.Request, ClientContext], Outcome]]:
        return {"devices": self.devices, "set_device": self.set_device, "public_message": self.public_message}

    def _manager(self) -> DevicesLike:
        # the service's SessionsLike protocol predates devices; the real SessionManager has these methods
        return cast(DevicesLike, self._service.sessions())

    def devices(self, req: pb.Request, ctx: ClientContext) -> Outcome:

        out = pb.DevicesResponse(devices=device_rows(self._manager().devices()))
        return Outcome(pb.Response(devices=out))

    def set_device(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        r = req.set_device
        iid = r.installation_id
        if not is_installation_id(iid):
            raise BadRequest("installation_id must be a printable id of at most 128 characters")
        manager = self._manager()
        try:
            if r.enabled:
                manager.approve_device(iid)
            else:
                manager.disable_device(iid)
        except DeviceError as exc:  # unknown id or our own: nothing changed
            raise BadRequest(str(exc)) from exc
        out = pb.SetDeviceResponse(bundle=manager.our_bundle(), devices=device_rows(manager.devices()))
        return Outcome(pb.Response(set_device=out), key="identity",
                        detail=f"{'approve' if r.enabled else 'disable'} installation={iid}")

    def public_message(self, req: pb.Request, ctx: ClientContext) -> Outcome:

        payload = bytes(req.public_message.payload)
        if len(payload) > MAX_PUBLIC_PAYLOAD:
            raise BadRequest(f"payload is larger than {MAX_PUBLIC_PAYLOAD} bytes")
        message = self._manager().public_message(payload)
        return Outcome(pb.Response(public_message=pb.PublicMessageResponse(message=message)), key="identity",
                        detail="unencrypted")


def device_handlers(service: "HandlerHost") -> dict[str, Callable[[pb.Request, ClientContext], Outcome]]:
    """The handler table entries :class:`Service` adds for devices and public messages."""
    return DeviceHandlers(service).handlers()
