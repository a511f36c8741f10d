"""``keyagent devices installations | approve ID | disable ID``: our own devices (installations) in the agent.

Added to the ``keyagent devices`` group of :mod:`agent.cli.cmd_hardware` (which lists USB readers and PKCS#11
slots) through its ``add_devices_subcommand`` hook, so hardware and installations stay separate modules.

An installation is one agent home of our identity. Another device of ours appears (disabled, "awaiting
approval") once a bundle signed by our identity key with its installation id reaches this agent - in a message,
a contact code (``keyagent contact import``) or ``keyagent add-bundle``. Approving it pairs it: it gets copies
of what we send and it is listed in our bundle, which rides on our next messages. At most 3 installations take
part (this one and the newest 2 approved others); the listing marks them ``active``.

An ID may be given as a unique prefix (at least 4 characters) of the installation id. Exit codes as for the
agent commands (:mod:`agent.cli.common`): 0 ok, 1 the agent refused, 2 bad input, 3 no agent reachable.
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any, Callable

from agent.cli.common import InputError, client_command
from agent.client import AgentClient, Device

__all__ = ["register", "installation_json", "resolve_installation_id"]

MIN_PREFIX = 4


def installation_json(d: Device) -> dict[str, Any]:
    """One installation as JSON (the agent's wire calls it a Device; the CLI shows it under ``devices``)."""
    return {"installation_id": d.installation_id, "is_self": d.is_self, "enabled": d.enabled,
            "active": d.active, "last_activity_ns": d.last_activity_ns, "spk_version": d.spk_version}


def _when(ns: int) -> str:
    if ns <= 0:
        return "never"
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _state(d: Device) -> str:
    if d.is_self:
        return "this device"
    if not d.enabled:
        return "awaiting approval"
    return "approved, active" if d.active else "approved, not used (only the newest 2 others take part)"


def _print_installations(devices: list[Device]) -> None:
    width = max(len(d.installation_id) for d in devices)
    for d in devices:
        mark = "*" if d.active else " "
        print(f"{mark} {d.installation_id:<{width}}  {_state(d):<18}  last activity {_when(d.last_activity_ns)}"
              f"  spk v{d.spk_version}")
    waiting = [d.installation_id for d in devices if not d.is_self and not d.enabled]
    if waiting:
        print(f"approve one of ours with: keyagent devices approve {waiting[0]}")


def resolve_installation_id(text: str, devices: list[Device]) -> str:
    """The installation id ``text`` names: an exact id, or a unique prefix of at least 4 characters."""
    ids = [d.installation_id for d in devices]
    if text in ids:
        return text
    if len(text) < MIN_PREFIX:
        raise InputError(f"no device {text!r} (give the id, or a prefix of at least {MIN_PREFIX} characters)")
    hits = [i for i in ids if i.startswith(text.lower())]
    if not hits:
        raise InputError(f"no device {text!r}: see keyagent devices installations")
    if len(hits) > 1:
        raise InputError(f"{text!r} matches several devices: {', '.join(hits)}")
    return hits[0]


def _installations(args: argparse.Namespace, c: AgentClient) -> int:
    devices = c.devices()
    if args.json:
        print(json.dumps([installation_json(d) for d in devices], indent=2, sort_keys=True))
    else:
        _print_installations(devices)
    return 0


def _set_installation(enabled: bool) -> Callable[[argparse.Namespace, AgentClient], int]:
    def run(args: argparse.Namespace, c: AgentClient) -> int:
        iid = resolve_installation_id(args.id, c.devices())
        bundle, devices = c.set_device(iid, enabled)
        if args.json:
            from agent.daemon.contact_card import encode_card

            print(json.dumps({"installation_id": iid, "enabled": enabled, "bundle": bundle.hex(),
                              "contact_code": encode_card(bundle),
                              "devices": [installation_json(d) for d in devices]}, indent=2, sort_keys=True))
            return 0
        row = next(d for d in devices if d.installation_id == iid)
        if enabled and row.active:
            print(f"approved {iid}: it receives our messages and is in our bundle (sent with the next message)")
        elif enabled:
            print(f"approved {iid}, but it is not used: only the newest 2 approved devices take part")
        else:
            print(f"disabled {iid}: no more messages to it; it left our bundle (sent with the next message)")
        _print_installations(devices)
        return 0

    return run


def _setup_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", help="agent socket (default: see `keyagent --help`)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _setup_list(p: argparse.ArgumentParser) -> None:
    _setup_common(p)
    p.description = ("Our installations: this device first, then our other devices (seen in bundles signed by "
                     "our identity key) newest first. '*' marks the ones that take part (in our bundle, sent to).")
    p.set_defaults(func=client_command(_installations))


def _setup_approve(p: argparse.ArgumentParser) -> None:
    _setup_common(p)
    p.add_argument("id", metavar="ID", help="installation id (or a unique prefix of at least 4 characters)")
    p.description = "Pair one of our own devices: it receives copies of our messages and joins our bundle."
    p.set_defaults(func=client_command(_set_installation(True)))


def _setup_disable(p: argparse.ArgumentParser) -> None:
    _setup_common(p)
    p.add_argument("id", metavar="ID", help="installation id (or a unique prefix of at least 4 characters)")
    p.description = "Unpair one of our own devices: no more messages to it, and it leaves our bundle."
    p.set_defaults(func=client_command(_set_installation(False)))


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``devices installations|approve|disable`` to cmd_hardware's ``devices`` group (load order free)."""
    from agent.cli.cmd_hardware import add_devices_subcommand

    add_devices_subcommand("installations", "list our installations (own devices) known to the agent",
                           _setup_list)
    add_devices_subcommand("approve", "approve (pair) one of our own devices", _setup_approve)
    add_devices_subcommand("disable", "disable (unpair) one of our own devices", _setup_disable)
