"""``keyagent public-message``: wrap stdin UNENCRYPTED in a ProtocolMessage (``public_message``).

The payload travels in the clear (only our signed bundle rides along): anyone who sees the message can read it,
and anyone can write one. It exists because status-go's ProtocolMessage has this field (public chats encrypt, if
at all, at another layer). ``keyagent decrypt`` of such a message warns and reports ``"public": true``.
A separate command (not an ``encrypt`` flag) so a secret is never sent in the clear by a wrong option.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.cli.common import InputError, client_command, read_stdin, write_bytes, plain_doc
from agent.client import AgentClient

__all__ = ["register"]

MAX_INPUT = 200 * 1024


def _public(args: argparse.Namespace, c: AgentClient) -> int:
    payload = read_stdin(MAX_INPUT)
    message = c.public_message(payload)
    print("keyagent: warning: PUBLIC message: the payload is NOT encrypted", file=sys.stderr)
    try:
        write_bytes(message, args.out)
    except OSError as exc:
        raise InputError(f"cannot write {args.out}: {exc.strerror}") from exc
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``public-message``."""
    p = subparsers.add_parser("public-message", parents=[common],
                              help="wrap stdin UNENCRYPTED in a ProtocolMessage (public_message)",
                              description=plain_doc(__doc__))
    p.add_argument("--socket", metavar="PATH", help="agent socket (default: see `keyagent --help`)")
    p.add_argument("-o", "--out", metavar="FILE", help="write the ProtocolMessage bytes here (default stdout)")
    p.set_defaults(func=client_command(_public))
