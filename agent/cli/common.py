"""What every agent-talking ``keyagent`` command shares: which agent, one error-to-exit-code rule, input helpers.

Which agent: ``--socket PATH``, else the agent of ``--home DIR`` when given on the command line, else
``$KEYAGENT_SOCK`` (so a shell that ran ``eval "$(keyagent start)"`` needs nothing more), else the agent of
``$KEYAGENT_HOME`` / the default home. Exit codes: 0 success, 1 the agent refused (its error code is printed), 2
bad input on our side, 3 no agent reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from agent.client import AgentClient, AgentError, AgentUnavailable, resolve_socket

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_INPUT", "EXIT_UNREACHABLE", "InputError", "agent_socket", "client_command",
           "fail", "print_json", "print_doc", "write_bytes", "read_stdin", "parse_peer", "read_bundle_file"]

#: The exit codes of every ``keyagent`` command (each command's docstring says which it uses).
EXIT_OK = 0
EXIT_FAILED = 1  # the agent refused (its error code is printed), or a check / installation failed
EXIT_INPUT = 2  # bad input or options on our side: nothing was done
EXIT_UNREACHABLE = 3  # no agent answered on the socket


class InputError(ValueError):
    """Bad input on the client side (file, identity text, digest, device id, code): fix it and run again."""


def _home_given(args: argparse.Namespace) -> bool:
    """Was --home given (it differs from $KEYAGENT_HOME / the XDG default the CLI fills in otherwise)?"""
    from agent.paths import default_home

    home: str = args.home
    return os.path.abspath(os.path.expanduser(home)) != os.path.abspath(default_home())


def agent_socket(args: argparse.Namespace) -> str:
    """--socket, else --home's agent, else $KEYAGENT_SOCK, else the agent of $KEYAGENT_HOME / the default home."""
    explicit = getattr(args, "socket", None)
    if explicit:
        return str(explicit)
    if _home_given(args):
        return resolve_socket(home=args.home)
    return resolve_socket(home=None if os.environ.get("KEYAGENT_SOCK") else args.home)


def fail(message: str, code: int) -> int:
    """One ``keyagent: ...`` line on stderr; returns ``code`` so a command can ``return fail(...)``."""
    print(f"keyagent: {message}", file=sys.stderr)
    return code


def client_command(func: Callable[[argparse.Namespace, AgentClient], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: connect, run, turn agent/transport/input errors into one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            with AgentClient(agent_socket(args)) as client:
                return func(args, client)
        except AgentError as exc:
            return fail(f"{exc.code}: {exc.message}", EXIT_FAILED)
        except AgentUnavailable as exc:
            return fail(f"{exc} (is the agent running? keyagent start)", EXIT_UNREACHABLE)
        except InputError as exc:
            return fail(str(exc), EXIT_INPUT)

    return run


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def print_doc(doc: dict[str, Any], as_json: bool) -> None:
    """A flat data document as JSON (``--json``) or as ``key: value`` lines for a person."""
    if as_json:
        print_json(doc)
    else:
        for key, value in doc.items():
            print(f"{key}: {value}")


def write_bytes(data: bytes, out: str | None) -> None:
    """To ``out`` (created 0600: it may be a decrypted payload) or to stdout when ``out`` is unset or ``-``."""
    if out and out != "-":
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def read_stdin(limit: int) -> bytes:
    """All of stdin, refused (not truncated) beyond ``limit`` bytes."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"input is larger than {limit} bytes")
    return data


def parse_peer(text: str) -> bytes:
    """A peer's chat key in any Status form (0x04…, compressed hex, zQ3…, status.app link)."""
    from agent.core.identity.formats import parse_peer_identity

    try:
        return parse_peer_identity(text)
    except ValueError as exc:  # BadIdentity: the parser's reason
        raise InputError(str(exc)) from exc


def read_bundle_file(path: str) -> bytes:
    """A bundle file: the JSON of ``keyagent bundle --json`` or the protobuf bytes (``-`` = stdin)."""
    from agent.core.bundle_json import BundleJsonError, bundle_from_json

    try:
        if path == "-":
            raw = sys.stdin.buffer.read(1 << 20)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(1 << 20)
    except OSError as exc:
        raise InputError(f"cannot read bundle file {path}: {exc.strerror}") from exc
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"bundle file {path} looks like JSON but does not parse") from exc
        try:
            return bundle_from_json(doc)
        except BundleJsonError as exc:
            raise InputError(str(exc)) from exc
    if not raw:
        raise InputError(f"bundle file {path} is empty")
    return raw


def command_adder(subparsers: Any, common: argparse.ArgumentParser) -> Callable[..., argparse.ArgumentParser]:
    """``add(name, help, func, json_out=False)``: a sub-command taking --home and --socket (and --json)."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--socket", metavar="PATH", help="agent socket (default: see `keyagent --help`)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--json", action="store_true", help="print JSON")

    def add(name: str, help_: str, func: Callable[[argparse.Namespace], int], *,
            json_out: bool = False) -> argparse.ArgumentParser:
        parents = [common, conn] + ([data] if json_out else [])
        p: argparse.ArgumentParser = subparsers.add_parser(name, parents=parents, help=help_)
        p.set_defaults(func=func)
        return p

    return add
