"""``keyagent bundle | add-bundle | encrypt | decrypt | sessions | rotate | confirm``: 1:1 messages through the agent.

Bundles travel as protobuf bytes or as their JSON form (agent/core/bundle_json.py). Which agent and the
exit codes: see agent/cli/common.py (0 success, 1 the agent refused, 2 bad input, 3 no agent reachable).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.cli.common import (InputError, client_command, command_adder, parse_peer, peer_names, print_json,
                              read_bundle_file, read_stdin, refuse_binary_to_terminal, write_bytes)
from agent.client import AgentClient, AgentError
from agent.core.bundle_json import bundle_to_json

__all__ = ["register"]


def _bundle(args: argparse.Namespace, c: AgentClient) -> int:
    data = c.bundle()
    if args.json:
        print_json(bundle_to_json(data))
    elif sys.stdout.isatty() and not args.out:
        print(data.hex())
    else:
        write_bytes(data, args.out)
    return 0


def _add_bundle(args: argparse.Namespace, c: AgentClient) -> int:
    identity = c.add_bundle(read_bundle_file(args.file))
    if args.json:
        print_json({"identity": identity.hex()})
    else:
        from agent.core.identity import zq3_encode

        print(f"{zq3_encode(identity)} {identity.hex()}")
    return 0


def _encrypt(args: argparse.Namespace, c: AgentClient) -> int:
    peer = parse_peer(args.to)
    if not args.json:
        refuse_binary_to_terminal(args.out, "the encrypted message")
    bundle = read_bundle_file(args.bundle) if args.bundle else None
    res = c.encrypt(peer, read_stdin(args.max_input), bundle)
    if not res.forward_secrecy and not args.new_peer:
        # No session and no bundle: a one-letter typo in a zQ3 key lands here too (an identity nobody owns).
        # The message made is dropped unsent; nothing about the peer was stored.
        raise InputError(f"no session with and no bundle from {peer_names(peer)}: never seen before",
                         code="NEW_PEER",
                         fix="check the key and the name with its owner, then rerun with --new-peer "
                             "(no forward secrecy) or give its bundle with --bundle FILE")
    if bundle is not None or not res.forward_secrecy:  # a new peer: name it, so a wrong key is noticed
        print(f"keyagent: encrypting to {peer_names(peer)}", file=sys.stderr)
    if not res.forward_secrecy:
        print("keyagent: warning: no session and no bundle: sent without forward secrecy", file=sys.stderr)
    if args.json:
        print_json({"message": res.message.hex(), "forward_secrecy": res.forward_secrecy,
                     "installations": res.installations})
    else:
        write_bytes(res.message, args.out)
    return 0


def _decrypt(args: argparse.Namespace, c: AgentClient) -> int:
    sender = parse_peer(args.sender)
    message = read_stdin(args.max_input)
    if not message:
        raise InputError("no message on stdin")
    try:
        res = c.decrypt(sender, message)
    except AgentError as exc:
        if exc.reply:
            _reply(exc.reply, args.reply_out)
        raise
    if res.reply:
        _reply(res.reply, args.reply_out)
    if not args.no_confirm and res.confirm_ref:
        c.confirm([res.confirm_ref])
    if res.public:  # an unencrypted public_message: never present it as a private one
        print("keyagent: warning: PUBLIC message: the payload was not encrypted", file=sys.stderr)
    if args.json:
        print_json({"payload": res.payload.hex(), "installation_id": res.installation_id,
                     "confirm_ref": res.confirm_ref.hex(), "reply": (res.reply or b"").hex(),
                     "public": res.public, "forward_secrecy": res.forward_secrecy})
    else:
        write_bytes(res.payload, args.out)
        if args.verbose:
            print(f"keyagent: from installation {res.installation_id}", file=sys.stderr)
    return 0


def _reply(reply: bytes, out: str | None) -> None:
    """A reply the agent wants sent back (our bundle): written to --reply-out, or said where it went and how."""
    if out:
        write_bytes(reply, out)
        print(f"keyagent: a reply for the sender (our bundle) is in {out}: send it back as a message",
              file=sys.stderr)
        return
    print("keyagent: the agent made a reply for the sender (our bundle, so it can open a session); it was not "
          "saved: rerun with --reply-out FILE and send that file back as a message", file=sys.stderr)


def _sessions(args: argparse.Namespace, c: AgentClient) -> int:
    rows = [
        {"peer": s.peer_identity.hex(), "installation_id": s.installation_id, "initiator": s.initiator,
         "confirmed": s.confirmed, "expired": s.expired, "created_ns": s.created_ns,
         "last_used_ns": s.last_used_ns, "bundle_id": s.bundle_id.hex()}
        for s in c.list_sessions()
    ]
    if args.json:
        print_json(rows)
    else:
        from agent.core.identity import zq3_encode

        print("PEER (chat key)  INSTALLATION  FLAGS")
        for r in rows:
            flags = ",".join(f for f in ("initiator", "confirmed", "expired") if r[f]) or "-"
            print(f"{zq3_encode(bytes.fromhex(str(r['peer'])))}  {r['installation_id']}  {flags}")
    return 0


def _rotate(args: argparse.Namespace, c: AgentClient) -> int:
    data = c.rotate(force=args.force)
    if args.json:
        print_json(bundle_to_json(data))
    else:
        print("signed prekey rotated", file=sys.stderr)
    return 0


def _confirm(args: argparse.Namespace, c: AgentClient) -> int:
    try:
        refs = [bytes.fromhex(r) for r in args.refs]
    except ValueError as exc:
        raise InputError("refs must be hex") from exc
    c.confirm(refs)
    return 0




def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the messaging sub-commands."""
    add = command_adder(subparsers, common)
    p = add("bundle", "print our signed bundle (protobuf bytes, or --json)", client_command(_bundle), json_out=True)
    p.add_argument("-o", "--out", metavar="FILE", help="write the protobuf bytes here")
    p = add("add-bundle", "store a peer's bundle (JSON or protobuf file)", client_command(_add_bundle),
            json_out=True)
    p.add_argument("file", metavar="FILE", help="the bundle: JSON of keyagent bundle --json, or protobuf bytes (- = stdin)")
    p = add("encrypt", "encrypt stdin for a peer; ProtocolMessage bytes on stdout", client_command(_encrypt),
            json_out=True)
    p.add_argument("--to", required=True, metavar="IDENTITY", help="0x04…, compressed hex, zQ3… or status.app link")
    p.add_argument("--bundle", metavar="FILE", help="the peer's bundle (JSON or protobuf)")
    p.add_argument("--new-peer", action="store_true",
                   help="allow a peer with no session and no bundle (checked by its name; no forward secrecy)")
    p.add_argument("-o", "--out", metavar="FILE", help="write the message here (stdout must not be a terminal)")
    p.add_argument("--max-input", type=int, default=200 * 1024, help=argparse.SUPPRESS)
    p = add("decrypt", "decrypt a ProtocolMessage on stdin; payload on stdout", client_command(_decrypt),
            json_out=True)
    p.add_argument("--from", dest="sender", required=True, metavar="IDENTITY",
                   help="the sender's chat key (0x04…, compressed hex, zQ3… or status.app link)")
    p.add_argument("-o", "--out", metavar="FILE", help="write the payload here instead of stdout")
    p.add_argument("--reply-out", metavar="FILE", help="write a reply the agent wants sent back (our bundle) here")
    p.add_argument("--no-confirm", action="store_true", help="do not confirm (keep the message key)")
    p.add_argument("-v", "--verbose", action="store_true", help="say which installation of the sender it came from")
    p.add_argument("--max-input", type=int, default=255 * 1024, help=argparse.SUPPRESS)
    add("sessions", "list sessions", client_command(_sessions), json_out=True)
    p = add("rotate", "rotate the signed prekey now (owner only; rate-limited)", client_command(_rotate),
            json_out=True)
    p.add_argument("--force", action="store_true", help="skip the rate limit (recorded in the audit log)")
    p = add("confirm", "confirm processed messages (frees their keys)", client_command(_confirm))
    p.add_argument("refs", nargs="+", metavar="REF", help="confirm refs in hex")
