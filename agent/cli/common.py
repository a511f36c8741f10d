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
import re
import sys
from typing import Any, Callable

from agent.client import AgentClient, AgentError, AgentUnavailable, UntrustedSocket, resolve_socket

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_INPUT", "EXIT_UNREACHABLE", "InputError", "agent_socket", "client_command",
           "fail", "fail_coded", "error_code", "describe_error", "plain_doc", "fix_for", "set_json_errors",
           "print_json", "print_doc", "write_bytes",
           "refuse_binary_to_terminal", "read_stdin", "parse_peer", "read_bundle_file", "peer_names"]

#: The exit codes of every ``keyagent`` command (each command's docstring says which it uses).
EXIT_OK = 0
EXIT_FAILED = 1  # the agent refused (its error code is printed), or a check / installation failed
EXIT_INPUT = 2  # bad input or options on our side: nothing was done
EXIT_UNREACHABLE = 3  # no agent answered on the socket


class InputError(ValueError):
    """Bad input on the client side (file, identity text, digest, device id, code): fix it and run again.

    ``code`` names the problem for scripts (``--json`` errors), ``fix`` says what to do instead."""

    def __init__(self, message: str, *, code: str = "BAD_INPUT", fix: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.fix = fix


#: What to do about an error code the agent (or a start-up check) returns: the third part of every error line.
_FIXES = {
    "LOCKED": "run keyagent unlock",
    "PIN_REQUIRED": "run keyagent unlock (or start with --pin-file / $KEYAGENT_PIN)",
    "PASSPHRASE_REQUIRED": "run keyagent unlock (or start with --passphrase-file / $KEYAGENT_PASSPHRASE)",
    "NOT_READY": "run keyagent unlock",
    "PIN_INCORRECT": "check the PIN and try again (wrong PINs are counted)",
    "PASSPHRASE_INCORRECT": "check the passphrase and try again",
    "PIN_LOCKED": "run keyagent unlock --force for one more try, or unblock the PIN with the SO PIN",
    "PIN_FINAL_TRY": "run keyagent unlock --force if you are sure of the PIN",
    "TOKEN_ABSENT": "insert the token (keyagent doctor shows what is seen)",
    "NO_SESSION": "send the reply (--reply-out) back to the sender, or add its bundle (keyagent add-bundle)",
    "STATE_ERROR": "restart the agent (keyagent stop; keyagent start)",
    "SUPERSEDED": "another agent runs on a copy of this home: stop this one (keyagent stop), keep one copy",
    "BAD_CONFIG": "fix the home's configuration (keyagent doctor)",
    "UNAVAILABLE": "is the agent running? start it: eval \"$(keyagent start)\"",
}

_json_errors = False


def set_json_errors(on: bool) -> None:
    """With ``--json`` every error is printed as one JSON object on stdout too (scripts parse one format)."""
    global _json_errors
    _json_errors = on


def fix_for(code: str) -> str:
    """The one-line fix for an error code ("" when there is nothing better to say than the message)."""
    return _FIXES.get(code, "")


def fail_coded(code: str, message: str, exit_code: int, fix: str | None = None) -> int:
    """The one error style: ``keyagent: CODE: what happened (fix)``, or a JSON object with ``--json``."""
    hint = fix_for(code) if fix is None else fix
    if _json_errors:
        print(json.dumps({"error": {"code": code, "message": message, "fix": hint}}, sort_keys=True))
    text = f"keyagent: {code}: {message}"
    if hint and hint not in message:
        text += f" ({hint})"
    print(text, file=sys.stderr)
    return exit_code


def error_code(exc: BaseException) -> str:
    """The stable code of an error: its ``code`` attribute (the agent's vocabulary), else one for OS errors."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    wire = getattr(code, "name", None)  # an enum member
    if isinstance(wire, str):
        return wire
    if isinstance(exc, PermissionError):
        return "PERMISSION_DENIED"
    if isinstance(exc, FileNotFoundError):
        return "NOT_FOUND"
    if isinstance(exc, OSError):
        return "OS_ERROR"
    return "INTERNAL"


def describe_error(exc: BaseException) -> str:
    """What happened, for a person: the file and the OS's reason for an OS error, else the error's own text
    (never ``[Errno 13]`` or a Python class name)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc) or "an unexpected error"


def _home_given(args: argparse.Namespace) -> bool:
    """Was --home given (it differs from $KEYAGENT_HOME / the XDG default the CLI fills in otherwise)?"""
    from agent.paths import default_home

    home: str = args.home
    return os.path.abspath(os.path.expanduser(home)) != os.path.abspath(default_home())


def agent_socket(args: argparse.Namespace) -> str:
    """--socket, else --home's agent, else $KEYAGENT_SOCK, else the agent of $KEYAGENT_HOME / the default home.

    The last case is said on stderr: after a failed ``eval "$(keyagent --home X start)"`` KEYAGENT_SOCK stays
    unset and the command would otherwise talk to another home's agent without a word."""
    explicit = getattr(args, "socket", None)
    if explicit:
        return str(explicit)
    if _home_given(args):
        return resolve_socket(home=args.home)
    if os.environ.get("KEYAGENT_SOCK"):
        return resolve_socket(home=None)
    if not os.environ.get("KEYAGENT_HOME"):
        print(f"keyagent: note: KEYAGENT_SOCK is unset: talking to the agent of the default home {args.home}",
              file=sys.stderr)
    return resolve_socket(home=args.home)


def fail(message: str, code: int) -> int:
    """One ``keyagent: ...`` line on stderr (JSON on stdout with ``--json``); returns ``code`` for ``return fail(...)``.

    ``message`` may start with an error code (``CODE: ...``); without one it gets the code of its exit status."""
    head, sep, rest = message.partition(": ")
    if sep and head.isupper() and head.replace("_", "").isalpha():
        return fail_coded(head, rest, code)
    return fail_coded({EXIT_INPUT: "BAD_INPUT", EXIT_UNREACHABLE: "UNAVAILABLE"}.get(code, "FAILED"), message, code)


def client_command(func: Callable[[argparse.Namespace, AgentClient], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: connect, run, turn agent/transport/input errors into one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            with AgentClient(agent_socket(args)) as client:
                return func(args, client)
        except AgentError as exc:
            return fail_coded(exc.code, exc.message, EXIT_FAILED)
        except AgentUnavailable as exc:
            return fail_coded("UNAVAILABLE", str(exc), EXIT_UNREACHABLE)
        except UntrustedSocket as exc:  # another user's socket: nothing was sent (the message names the fix)
            return fail_coded(exc.code, str(exc), EXIT_FAILED, "")
        except InputError as exc:
            return fail_coded(exc.code, str(exc), EXIT_INPUT, exc.fix)

    return run


def plain_doc(text: str | None) -> str:
    """A module docstring as help text: without reST markup (double backticks, ``:mod:`x```), which --help
    would otherwise show raw."""
    body = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text or "")
    return body.replace("``", "")


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


def refuse_binary_to_terminal(out: str | None, what: str) -> None:
    """Binary output never goes to a terminal (it can garble or drive it, as gpg refuses): ask for -o or --json."""
    if (not out or out == "-") and sys.stdout.isatty():
        raise InputError(f"{what} is binary and stdout is a terminal", code="BINARY_TO_TERMINAL",
                         fix="redirect it (> FILE), use -o FILE, or --json for hex")


def peer_names(pub33: bytes) -> str:
    """A peer's three-word name, emoji hash and zQ3… key: what two people compare aloud before trusting it."""
    from agent.core.identity import visual_fields, zq3_encode

    vis = visual_fields(pub33)
    return f"{vis['alias']}  {vis['emoji_hash']}  ({zq3_encode(pub33)})"


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
