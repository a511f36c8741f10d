"""``keyagent public-message``: wrap stdin UNENCRYPTED in a ProtocolMessage (``public_message``).

The payload travels in the clear (only our signed bundle rides along): anyone who sees the message can read it,
and anyone can write one. It exists because status-go's ProtocolMessage has this field (public chats encrypt, if
at all, at another layer). ``keyagent decrypt`` of such a message warns and reports ``"public": true``.
A separate command (not an ``encrypt`` flag) so a secret is never sent in the clear by a wrong option.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from agent.cli.cmd_installations import InputError, client_command
from agent.client import AgentClient

__all__ = ["register"]

MAX_INPUT = 200 * 1024


def _public(args: argparse.Namespace, c: AgentClient) -> int:
    payload = sys.stdin.buffer.read(MAX_INPUT + 1)
    if len(payload) > MAX_INPUT:
        raise InputError(f"input is larger than {MAX_INPUT} bytes")
    message = c.public_message(payload)
    print("keyagent: warning: PUBLIC message: the payload is NOT encrypted", file=sys.stderr)
    if args.out and args.out != "-":
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(message)
        except OSError as exc:
            raise InputError(f"cannot write {args.out}: {exc.strerror}") from exc
    else:
        sys.stdout.buffer.write(message)
        sys.stdout.buffer.flush()
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``public-message``."""
    p = subparsers.add_parser("public-message", parents=[common],
                              help="wrap stdin UNENCRYPTED in a ProtocolMessage (public_message)",
                              description=__doc__)
    p.add_argument("--socket", metavar="PATH", help="agent socket (default: see `keyagent --help`)")
    p.add_argument("-o", "--out", metavar="FILE", help="write the ProtocolMessage bytes here (default stdout)")
    p.set_defaults(func=client_command(_public))
