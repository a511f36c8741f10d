"""``keyagent waku seal | open | negotiated | contact-code``: the Waku payload layer through the agent.

``seal`` reads the payload on stdin and writes the wire bytes (the WakuMessage payload, version 1) on stdout;
``open`` reads wire bytes on stdin and writes the payload (``--json``: hex payload, signer chat key or null,
mode). Without ``--sym-key`` both use the identity key in the agent: seal encrypts to ``--to`` (ECIES), open
does the ECDH in the token and returns only what the MAC authenticated. Exit codes as for the other agent
commands: 1 the agent refused (e.g. ``DECRYPT_FAILED``, ``BUSY``), 2 bad input, 3 no agent.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import (InputError, client_command, parse_peer, plain_doc, print_doc, print_json, read_stdin,
                              refuse_binary_to_terminal, write_bytes)
from agent.client import AgentClient

__all__ = ["register", "parse_sym_key"]

#: The agent's default frame cap is 256 KiB; leave room for the request's own fields.
_MAX_INPUT = 256 * 1024 - 512


def parse_sym_key(text: str) -> bytes:
    """A 32-byte symmetric key given as 64 hex digits (optional ``0x``)."""
    body = text.strip()
    if body[:2] in ("0x", "0X"):
        body = body[2:]
    try:
        key = bytes.fromhex(body)
    except ValueError as exc:
        raise InputError("--sym-key must be hex") from exc
    if len(key) != 32:
        raise InputError(f"--sym-key must be 32 bytes (64 hex digits), not {len(key)}")
    return key


def _bare_uncompressed(text: str) -> str:
    """A 130-hex-digit uncompressed key as printed without its ``0x`` (``04…``) is the same key: accept it."""
    body = text.strip()
    if len(body) == 130 and body[:2] == "04" and all(c in "0123456789abcdefABCDEF" for c in body):
        return "0x" + body
    return text


def _seal(args: argparse.Namespace, c: AgentClient) -> int:
    if not args.json:
        refuse_binary_to_terminal(None, "the sealed wire bytes")
    if args.to is not None:
        to, sym = parse_peer(_bare_uncompressed(args.to)), None
    else:
        to, sym = None, parse_sym_key(args.sym_key)
    wire = c.waku_seal(read_stdin(args.max_input), to=to, sym_key=sym, sign=args.sign)
    if args.json:
        print_json({"wire": wire.hex(), "mode": "asymmetric" if to is not None else "symmetric",
                    "signed": bool(args.sign)})
    else:
        write_bytes(wire, None)
    return 0


def _open(args: argparse.Namespace, c: AgentClient) -> int:
    sym = parse_sym_key(args.sym_key) if args.sym_key is not None else None
    wire = read_stdin(args.max_input)
    if not wire:
        raise InputError("no wire bytes on stdin")
    res = c.waku_open(wire, sym_key=sym)
    if args.json:
        signer = "0x" + res.signer_public_key.hex() if res.signer_public_key else None
        print_json({"payload": res.payload.hex(), "signer": signer, "mode": res.mode})
    else:
        write_bytes(res.payload, None)
    return 0


def _negotiated(args: argparse.Namespace, c: AgentClient) -> int:
    res = c.waku_negotiated(parse_peer(args.peer))
    doc = {"sym_key": res.sym_key.hex(), "content_topic": res.content_topic, "topic": "0x" + res.topic.hex()}
    print_doc(doc, args.json)
    return 0


def _contact_code(args: argparse.Namespace, c: AgentClient) -> int:
    res = c.waku_contact_code()
    doc = {"sym_key": res.sym_key.hex(), "content_topic": res.content_topic, "topic": "0x" + res.topic.hex(),
           "partitioned_topic": res.partitioned_topic}
    print_doc(doc, args.json)
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``keyagent waku ...``."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--socket", metavar="PATH", help="agent socket (default: see `keyagent --help`)")
    conn.add_argument("--json", action="store_true", help="print JSON")
    waku: argparse.ArgumentParser = subparsers.add_parser(
        "waku", parents=[common], help="seal/open Waku payloads with the agent's identity key",
        description=plain_doc(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = waku.add_subparsers(dest="waku_command", metavar="WAKU_COMMAND")
    sub.required = True

    p = sub.add_parser("seal", parents=[common, conn],
                       help="seal stdin; wire bytes on stdout (not to a terminal: redirect it, or --json)")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--to", metavar="CHATKEY", help="recipient: 0x04…, compressed hex, zQ3… or status.app link")
    key.add_argument("--sym-key", metavar="HEX", help="32-byte symmetric key (public chat, contact code, ...)")
    p.add_argument("--sign", action="store_true", help="sign the envelope with our identity key")
    p.add_argument("--max-input", type=int, default=_MAX_INPUT, help=argparse.SUPPRESS)
    p.set_defaults(func=client_command(_seal))

    p = sub.add_parser("open", parents=[common, conn], help="open wire bytes on stdin; payload on stdout")
    p.add_argument("--sym-key", metavar="HEX", help="32-byte symmetric key (default: our identity key, ECIES)")
    p.add_argument("--max-input", type=int, default=_MAX_INPUT, help=argparse.SUPPRESS)
    p.set_defaults(func=client_command(_open))

    p = sub.add_parser("negotiated", parents=[common, conn],
                       help="the negotiated topic's key and content topic with a peer (secret stays in the agent)")
    p.add_argument("--with", dest="peer", required=True, metavar="CHATKEY")
    p.set_defaults(func=client_command(_negotiated))

    p = sub.add_parser("contact-code", parents=[common, conn],
                       help="our contact-code channel (key, topic) and our partitioned 1:1 topic")
    p.set_defaults(func=client_command(_contact_code))
