"""``keyagent whoami | sign | inspect-key``: our identity (from the agent), and a peer's identity (offline).

``whoami`` asks the agent for our Status identity (keys, key UID, share link, name/emoji/colour hash, contact
code) and falls back to the home's ``config.json`` when no agent answers; ``sign`` signs a 32-byte digest with
the identity key in the agent. Exit codes as for the other agent commands (:mod:`agent.cli.common`).

``keyagent inspect-key IDENTITY``: show a peer's Status key in every form, with its name, emoji and colour hash.
Offline and pure (no agent needed): for contact import, where two people compare the three-word name and the
emoji hash face to face before trusting a pasted key, and to find the contact-code topic on which that peer
publishes its signed bundle. Accepts ``0x04…``, compressed hex, ``zQ3…`` and status.app links; anything else is
refused with one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.cli.common import (EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE, InputError, agent_socket,
                              client_command, command_adder, describe_error, fail, print_json)
from agent.client import AgentClient, AgentError, AgentUnavailable, UntrustedSocket

__all__ = ["register"]


def _cmd_whoami(args: argparse.Namespace) -> int:
    """Ask the agent; when none answers (and no --socket was given) read the home's config.json instead."""
    from agent.identity.record import StatusRecord
    from agent.identity.whoami import identity_document, identity_text, offline_document

    try:
        with AgentClient(agent_socket(args)) as c:
            ident = c.identity()
        record = StatusRecord(ident.key_uid, ident.key_uid_origin) if ident.key_uid else None
        if record is None:  # an agent without key UIDs in its identity response
            from agent.identity.record import read_status_record

            record = read_status_record(args.home, ident.identity_public_key)
        doc = identity_document(ident.identity_public_key, record, ident.installation_id,
                                contact=not ident.contact_code_topic)
        if ident.contact_code_topic:
            doc.update(contact_code_topic=ident.contact_code_topic,
                       contact_code_key="0x" + ident.contact_code_key.hex())
    except AgentError as exc:
        return fail(f"{exc.code}: {exc.message}", EXIT_FAILED)
    except UntrustedSocket as exc:  # another user's socket: nothing was sent, and no offline fallback either
        return fail(f"{exc.code}: {exc}", EXIT_FAILED)
    except AgentUnavailable as exc:
        if getattr(args, "socket", None):
            return fail(f"{exc} (is the agent running? keyagent start)", EXIT_UNREACHABLE)
        from agent.home_trust import UnsafeHome

        try:
            doc = offline_document(args.home)
        except UnsafeHome as err:  # the home is not believed: say why, not "no readable config"
            return fail(f"{err.code}: {err}", EXIT_FAILED)
        except Exception as err:
            return fail(f"{exc}, and the home has no readable config.json ({describe_error(err)})",
                        EXIT_UNREACHABLE)
        print("keyagent: no agent running; read from the home's config.json", file=sys.stderr)
    if args.json:
        print_json(doc)
    else:
        print(identity_text(doc))
    return 0



def _sign(args: argparse.Namespace, c: AgentClient) -> int:
    try:
        digest = bytes.fromhex(args.digest[2:] if args.digest.startswith("0x") else args.digest)
    except ValueError as exc:
        raise InputError("digest must be hex") from exc
    if len(digest) != 32:
        raise InputError("digest must be 32 bytes (64 hex digits)")
    sig = c.sign(digest)
    if args.json:
        print_json({"digest": digest.hex(), "signature": sig.hex()})
    else:
        print(sig.hex())
    return 0




def _cmd_inspect_key(args: argparse.Namespace) -> int:
    from agent.core.errors import BadIdentity
    from agent.identity.whoami import identity_text, peer_document

    try:
        doc = peer_document(args.identity, contact=not args.no_contact_code)
    except BadIdentity as exc:
        return fail(f"BAD_IDENTITY: {exc}", EXIT_INPUT)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(identity_text(doc))
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``whoami``, ``sign`` and ``inspect-key``."""
    add = command_adder(subparsers, common)
    add("whoami", "show our Status identity (keys, key UID, share link, name/emoji/colour hash, contact code)",
        _cmd_whoami, json_out=True)
    p = add("sign", "sign a 32-byte digest (hex) with the identity key", client_command(_sign), json_out=True)
    p.add_argument("digest", metavar="HEX", help="the 32-byte digest to sign, as 64 hex digits (optional 0x)")
    p = subparsers.add_parser("inspect-key", parents=[common],
                              help="show a peer's key in every Status form with its name/emoji/colour hash")
    p.add_argument("identity", metavar="IDENTITY", help="0x04…, compressed hex, zQ3… or a status.app link")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-contact-code", action="store_true",
                   help="skip the contact-code topic/key (a 65356-round PBKDF2)")
    p.set_defaults(func=_cmd_inspect_key)
