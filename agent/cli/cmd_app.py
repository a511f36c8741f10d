"""``keyagent app wrap | unwrap``: Status application messages (status-go ApplicationMetadataMessage).

``wrap --type TYPE`` reads a marshalled message of TYPE (status-go's enum name, e.g. ``CHAT_MESSAGE``, or its
number) on stdin and writes the signed wrapper on stdout; the agent hashes and checks the payload itself and
refuses one that could stand for another signature (REFUSED_PAYLOAD). ``unwrap`` verifies a wrapper and prints
its ``signer`` (the 0x04… chat key), ``type``, ``payload`` (hex) and ``message_id``. Exit codes: see
:mod:`agent.cli.common`.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import (InputError, client_command, command_adder, print_doc, print_json, read_stdin,
                              write_bytes)
from agent.client import AgentClient

__all__ = ["register"]

_MAX_INPUT = 256 * 1024


def _wrap(args: argparse.Namespace, c: AgentClient) -> int:
    from agent.core.app_message import type_number

    try:
        type_ = type_number(args.type)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    payload = read_stdin(_MAX_INPUT)
    out = c.app_wrap(payload, type_)
    if args.json:
        print_json({"message": out.message.hex(), "message_id": "0x" + out.message_id.hex()})
    else:
        write_bytes(out.message, args.out)
    return 0


def _unwrap(args: argparse.Namespace, c: AgentClient) -> int:
    message = read_stdin(_MAX_INPUT)
    if not message:
        raise InputError("no message on stdin")
    m = c.app_unwrap(message)
    doc = {"signer": "0x" + m.signer.hex(), "type": m.type_name or str(m.type), "type_number": m.type,
           "payload": m.payload.hex(), "message_id": "0x" + m.message_id.hex()}
    print_doc(doc, args.json)
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``app wrap`` and ``app unwrap``."""
    app = subparsers.add_parser("app", parents=[common], help="sign / verify Status application messages")
    sub = app.add_subparsers(dest="app_command", metavar="ACTION")
    sub.required = True
    add = command_adder(sub, common)
    p = add("wrap", "sign a Status application message read on stdin", client_command(_wrap), json_out=True)
    p.add_argument("--type", required=True, metavar="TYPE", help="status-go type name (CHAT_MESSAGE) or number")
    p.add_argument("--out", metavar="FILE", help="write the wrapper here (default: stdout)")
    add("unwrap", "verify a Status application message read on stdin; print its signer", client_command(_unwrap),
        json_out=True)
