"""``keyagent start | stop | status | lock | unlock | whoami | bundle | add-bundle | encrypt | decrypt | sign |
sessions | rotate | confirm | release``: run the agent and talk to it over its socket.

Which agent: ``--socket PATH``, else the agent of ``--home DIR`` when given on the command line, else
``$KEYAGENT_SOCK`` (so a shell that ran ``eval "$(keyagent start)"`` needs nothing more), else the agent of
``$KEYAGENT_HOME`` / the default home. Exit codes: 0 success, 1 the agent refused (its error code is printed), 2
bad input on our side, 3 no agent reachable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import Any, Callable

from agent.client import AgentClient, AgentError, AgentUnavailable, resolve_socket

__all__ = ["register", "bundle_to_json", "bundle_from_json", "read_bundle_file"]

EXIT_REFUSED, EXIT_INPUT, EXIT_UNREACHABLE = 1, 2, 3


class _InputError(ValueError):
    """Bad input on the client side (file, identity text, digest)."""


# --- bundle JSON ------------------------------------------------------------------------------------------------


def bundle_to_json(data: bytes) -> dict[str, Any]:
    """A signed Bundle protobuf as JSON with the proto's field names and hex bytes."""
    from agent.core.wire import decode_bundle

    b = decode_bundle(data)
    return {
        "identity": b.identity.hex(),
        "signed_pre_keys": {
            iid: {"signed_pre_key": spk.signed_pre_key.hex(), "version": spk.version,
                  "protocol_version": spk.protocol_version}
            for iid, spk in sorted(b.signed_pre_keys.items())
        },
        "timestamp": b.timestamp,
        "signature": b.signature.hex(),
    }


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _InputError(f"bundle JSON: {what} must be a hex string")
    text = value[2:] if value[:2] in ("0x", "0X") else value
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise _InputError(f"bundle JSON: {what} is not hex") from exc


def _uint(value: Any, what: str, bits: int, signed: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _InputError(f"bundle JSON: {what} must be an integer")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise _InputError(f"bundle JSON: {what} is out of range")
    return value


def bundle_from_json(doc: Any) -> bytes:
    """The inverse of :func:`bundle_to_json` (the signature is checked by the agent, not here)."""
    from agent.pb.status import protocol_message_pb2 as spb

    if not isinstance(doc, dict):
        raise _InputError("bundle JSON must be an object")
    unknown = set(doc) - {"identity", "signed_pre_keys", "timestamp", "signature"}
    if unknown:
        raise _InputError(f"bundle JSON: unknown field(s) {', '.join(sorted(unknown))}")
    b = spb.Bundle(identity=_hex(doc.get("identity", ""), "identity"),
                   signature=_hex(doc.get("signature", ""), "signature"),
                   timestamp=_uint(doc.get("timestamp", 0), "timestamp", 64, signed=True))
    spks = doc.get("signed_pre_keys", {})
    if not isinstance(spks, dict):
        raise _InputError("bundle JSON: signed_pre_keys must be an object")
    for iid, spk in spks.items():
        if not isinstance(spk, dict):
            raise _InputError(f"bundle JSON: signed_pre_keys[{iid!r}] must be an object")
        extra = set(spk) - {"signed_pre_key", "version", "protocol_version"}
        if extra:
            raise _InputError(f"bundle JSON: unknown field(s) {', '.join(sorted(extra))} in {iid!r}")
        entry = b.signed_pre_keys[iid]
        entry.signed_pre_key = _hex(spk.get("signed_pre_key", ""), f"{iid}.signed_pre_key")
        entry.version = _uint(spk.get("version", 0), f"{iid}.version", 32)
        entry.protocol_version = _uint(spk.get("protocol_version", 0), f"{iid}.protocol_version", 32)
    return bytes(b.SerializeToString())


def read_bundle_file(path: str) -> bytes:
    """A bundle file: the JSON of ``keyagent bundle --json`` or the protobuf bytes (``-`` = stdin)."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(1 << 20)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(1 << 20)
    except OSError as exc:
        raise _InputError(f"cannot read bundle file {path}: {exc.strerror}") from exc
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _InputError(f"bundle file {path} looks like JSON but does not parse") from exc
        return bundle_from_json(doc)
    if not raw:
        raise _InputError(f"bundle file {path} is empty")
    return raw


# --- helpers ----------------------------------------------------------------------------------------------------


def _home_given(args: argparse.Namespace) -> bool:
    """Was --home given (it differs from $KEYAGENT_HOME / the XDG default the CLI fills in otherwise)?"""
    from agent.paths import default_home

    home: str = args.home
    return os.path.abspath(os.path.expanduser(home)) != os.path.abspath(default_home())


def _socket(args: argparse.Namespace) -> str:
    """--socket, else --home's agent, else $KEYAGENT_SOCK, else the agent of $KEYAGENT_HOME / the default home."""
    explicit = getattr(args, "socket", None)
    if explicit:
        return str(explicit)
    if _home_given(args):
        return resolve_socket(home=args.home)
    return resolve_socket(home=None if os.environ.get("KEYAGENT_SOCK") else args.home)


def _peer(text: str) -> bytes:
    from agent.core.identity.formats import parse_peer_identity

    try:
        return parse_peer_identity(text)
    except ValueError as exc:
        raise _InputError(str(exc)) from exc


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _print_doc(doc: dict[str, Any], as_json: bool) -> None:
    """A flat data document as JSON (``--json``) or as ``key: value`` lines for a person."""
    if as_json:
        _print_json(doc)
    else:
        for key, value in doc.items():
            print(f"{key}: {value}")


def _fail(message: str, code: int) -> int:
    print(f"keyagent: {message}", file=sys.stderr)
    return code


def _client_command(func: Callable[[argparse.Namespace, AgentClient], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: connect, run, turn agent/transport/input errors into one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            with AgentClient(_socket(args)) as client:
                return func(args, client)
        except AgentError as exc:
            return _fail(f"{exc.code}: {exc.message}", EXIT_REFUSED)
        except AgentUnavailable as exc:
            return _fail(f"{exc} (is the agent running? keyagent start)", EXIT_UNREACHABLE)
        except _InputError as exc:
            return _fail(str(exc), EXIT_INPUT)

    return run


def _write_bytes(data: bytes, out: str | None) -> None:
    if out and out != "-":
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _read_stdin(limit: int) -> bytes:
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise _InputError(f"input is larger than {limit} bytes")
    return data


# --- commands ---------------------------------------------------------------------------------------------------


def _cmd_start(args: argparse.Namespace) -> int:
    from agent.daemon.config import ConfigError, Home, load_config
    from agent.daemon.daemonize import StartError, shell_lines, spawn_background
    from agent.paths import socket_path_for

    home = Home.at(args.home)
    try:
        config = load_config(home).with_overrides(
            allow_uids=tuple(args.allow_uid) if args.allow_uid else None,
            allow_gids=tuple(args.allow_gid) if args.allow_gid else None,
            max_frame=args.max_frame, allow_ecdh=True if args.allow_ecdh else None, unlock_ttl=args.unlock_ttl,
        )
    except ConfigError as exc:
        return _fail(str(exc), EXIT_INPUT)
    sock = args.socket or str(socket_path_for(home.path))
    if args.foreground:
        return _run_foreground(args, home, config, sock)
    shell = "csh" if args.csh else "fish" if args.fish else "sh" if args.sh else _guess_shell()
    child = [sys.executable, "-m", "agent", "start", "-D", "--home", str(home.path), "--socket", sock]
    for uid in args.allow_uid or ():
        child += ["--allow-uid", str(uid)]
    for gid in args.allow_gid or ():
        child += ["--allow-gid", str(gid)]
    if args.max_frame is not None:
        child += ["--max-frame", str(args.max_frame)]
    if args.allow_ecdh:
        child.append("--allow-ecdh")
    if args.unlock_ttl is not None:
        child += ["--unlock-ttl", str(args.unlock_ttl)]
    for opt in ("pin_file", "passphrase_file"):
        value = getattr(args, opt)
        if value:
            child += ["--" + opt.replace("_", "-"), os.path.abspath(value)]
    try:
        pid, path = spawn_background(child, home)
    except StartError as exc:
        return _fail(str(exc), EXIT_REFUSED)
    sys.stdout.write(shell_lines(path, pid, shell))
    return 0


def _guess_shell() -> str:
    shell = os.path.basename(os.environ.get("SHELL", ""))
    return "csh" if shell.endswith("csh") else "fish" if shell == "fish" else "sh"


def _run_foreground(args: argparse.Namespace, home: Any, config: Any, sock: str) -> int:
    import logging

    from agent.daemon.daemonize import run_foreground, take_start_secret, write_ready

    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s keyagent[%(process)d] %(levelname)s %(name)s: %(message)s")
    ready_fd: int | None = args.ready_fd
    try:
        home.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = take_start_secret(args.pin_file, args.passphrase_file)

        def ready(path: str) -> None:
            if ready_fd is not None:
                write_ready(ready_fd, f"READY {path}")

        return run_foreground(home, config, socket_path=sock, secret=secret, ready=ready)
    except Exception as exc:
        code = getattr(type(exc), "code", type(exc).__name__)
        line = f"{code}: {exc}"
        logging.getLogger("keyagent").error("cannot start: %s", line)
        if ready_fd is not None:
            write_ready(ready_fd, f"ERROR {line}")
            ready_fd = None
        return _fail(f"cannot start: {line}", EXIT_REFUSED)


def _cmd_stop(args: argparse.Namespace) -> int:
    path = _socket(args)
    def stop(a: argparse.Namespace, c: AgentClient) -> int:
        c.stop()
        return 0

    rc = _client_command(stop)(args)
    if rc != 0:
        return rc
    deadline = time.monotonic() + 30
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(path):
        return _fail(f"the agent accepted stop but {path} still exists", EXIT_REFUSED)
    print("agent stopped", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace, c: AgentClient) -> int:
    st = c.status()
    doc = {
        "locked": st.locked, "backend": st.backend, "token_present": st.token_present,
        "backend_unlocked": st.backend_unlocked, "identity": st.identity_public_key.hex(),
        "installation_id": st.installation_id, "pid": st.pid, "version": st.version, "home": st.home,
        "socket": st.socket, "unlock_failures": st.unlock_failures, "uptime_seconds": st.uptime_seconds,
        "sessions_open": st.sessions_open, "connections": st.connections,
        "unlock_ttl_remaining": st.unlock_ttl_remaining, "ecdh_allowed": st.ecdh_allowed, "detail": st.detail,
    }
    _print_doc(doc, args.json)
    return 0


def _lock(args: argparse.Namespace, c: AgentClient) -> int:
    password = ""
    if args.password:
        password = getpass.getpass("lock password: ")
        if password != getpass.getpass("again: "):
            raise _InputError("the passwords differ")
    c.lock(password)
    print("agent locked", file=sys.stderr)
    return 0


def _unlock(args: argparse.Namespace, c: AgentClient) -> int:
    if args.secret_file:
        from backends.pin import read_secret_file

        try:
            secret = read_secret_file(args.secret_file)
        except Exception as exc:
            raise _InputError(str(exc)) from exc
    else:
        secret = os.environ.get("KEYAGENT_PIN") or os.environ.get("KEYAGENT_PASSPHRASE") or ""
        if not secret:
            if not sys.stdin.isatty():
                secret = sys.stdin.readline().rstrip("\r\n")
            else:
                secret = getpass.getpass("PIN, passphrase or lock password: ")
    if not secret:
        raise _InputError("no secret given")
    c.unlock(secret, force=args.force)
    print("agent unlocked", file=sys.stderr)
    return 0


def _cmd_whoami(args: argparse.Namespace) -> int:
    """Ask the agent; when none answers (and no --socket was given) read the home's config.json instead."""
    from agent.status_identity import StatusRecord, identity_document, identity_text, offline_document

    try:
        with AgentClient(_socket(args)) as c:
            ident = c.identity()
        record = StatusRecord(ident.key_uid, ident.key_uid_origin) if ident.key_uid else None
        if record is None:  # an agent without key UIDs in its identity response
            from agent.status_identity import read_status_record

            record = read_status_record(args.home, ident.identity_public_key)
        doc = identity_document(ident.identity_public_key, record, ident.installation_id,
                                contact=not ident.contact_code_topic)
        if ident.contact_code_topic:
            doc.update(contact_code_topic=ident.contact_code_topic,
                       contact_code_key="0x" + ident.contact_code_key.hex())
    except AgentError as exc:
        return _fail(f"{exc.code}: {exc.message}", EXIT_REFUSED)
    except AgentUnavailable as exc:
        if getattr(args, "socket", None):
            return _fail(f"{exc} (is the agent running? keyagent start)", EXIT_UNREACHABLE)
        try:
            doc = offline_document(args.home)
        except Exception as err:
            return _fail(f"{exc}, and the home has no readable config.json ({err})", EXIT_UNREACHABLE)
        print("keyagent: no agent running; read from the home's config.json", file=sys.stderr)
    if args.json:
        _print_json(doc)
    else:
        print(identity_text(doc))
    return 0


def _bundle(args: argparse.Namespace, c: AgentClient) -> int:
    data = c.bundle()
    if args.json:
        _print_json(bundle_to_json(data))
    elif sys.stdout.isatty() and not args.out:
        print(data.hex())
    else:
        _write_bytes(data, args.out)
    return 0


def _add_bundle(args: argparse.Namespace, c: AgentClient) -> int:
    identity = c.add_bundle(read_bundle_file(args.file))
    if args.json:
        _print_json({"identity": identity.hex()})
    else:
        print(identity.hex())
    return 0


def _encrypt(args: argparse.Namespace, c: AgentClient) -> int:
    peer = _peer(args.to)
    bundle = read_bundle_file(args.bundle) if args.bundle else None
    res = c.encrypt(peer, _read_stdin(args.max_input), bundle)
    if not res.forward_secrecy:
        print("keyagent: warning: no session and no bundle: sent without forward secrecy", file=sys.stderr)
    if args.json:
        _print_json({"message": res.message.hex(), "forward_secrecy": res.forward_secrecy,
                     "installations": res.installations})
    else:
        _write_bytes(res.message, args.out)
    return 0


def _decrypt(args: argparse.Namespace, c: AgentClient) -> int:
    sender = _peer(args.sender)
    message = _read_stdin(args.max_input)
    if not message:
        raise _InputError("no message on stdin")
    try:
        res = c.decrypt(sender, message)
    except AgentError as exc:
        if exc.reply and args.reply_out:
            _write_bytes(exc.reply, args.reply_out)
        raise
    if res.reply and args.reply_out:
        _write_bytes(res.reply, args.reply_out)
    if not args.no_confirm and res.confirm_ref:
        c.confirm([res.confirm_ref])
    if res.public:  # an unencrypted public_message: never present it as a private one
        print("keyagent: warning: PUBLIC message: the payload was not encrypted", file=sys.stderr)
    if args.json:
        _print_json({"payload": res.payload.hex(), "installation_id": res.installation_id,
                     "confirm_ref": res.confirm_ref.hex(), "reply": (res.reply or b"").hex(),
                     "public": res.public, "forward_secrecy": res.forward_secrecy})
    else:
        _write_bytes(res.payload, args.out)
        if args.verbose:
            print(f"keyagent: from installation {res.installation_id}", file=sys.stderr)
    return 0


def _sign(args: argparse.Namespace, c: AgentClient) -> int:
    try:
        digest = bytes.fromhex(args.digest[2:] if args.digest.startswith("0x") else args.digest)
    except ValueError as exc:
        raise _InputError("digest must be hex") from exc
    if len(digest) != 32:
        raise _InputError("digest must be 32 bytes (64 hex digits)")
    sig = c.sign(digest)
    if args.json:
        _print_json({"digest": digest.hex(), "signature": sig.hex()})
    else:
        print(sig.hex())
    return 0


def _sessions(args: argparse.Namespace, c: AgentClient) -> int:
    rows = [
        {"peer": s.peer_identity.hex(), "installation_id": s.installation_id, "initiator": s.initiator,
         "confirmed": s.confirmed, "expired": s.expired, "created_ns": s.created_ns,
         "last_used_ns": s.last_used_ns, "bundle_id": s.bundle_id.hex()}
        for s in c.list_sessions()
    ]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            flags = ",".join(f for f in ("initiator", "confirmed", "expired") if r[f]) or "-"
            print(f"{r['peer']} {r['installation_id']} {flags}")
    return 0


def _rotate(args: argparse.Namespace, c: AgentClient) -> int:
    data = c.rotate()
    if args.json:
        _print_json(bundle_to_json(data))
    else:
        print("signed prekey rotated", file=sys.stderr)
    return 0


def _confirm(args: argparse.Namespace, c: AgentClient) -> int:
    try:
        refs = [bytes.fromhex(r) for r in args.refs]
    except ValueError as exc:
        raise _InputError("refs must be hex") from exc
    c.confirm(refs)
    return 0


def _release(args: argparse.Namespace, c: AgentClient) -> int:
    c.release()
    print("token released", file=sys.stderr)
    return 0


# --- registration -----------------------------------------------------------------------------------------------


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the agent's sub-commands."""
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

    p = add("start", "start the agent (prints shell lines to eval)", _cmd_start)
    p.description = "Start the agent for --home (eval \"$(keyagent start)\"), or run it in the foreground (-D)."
    p.epilog = (
        "Socket: $XDG_RUNTIME_DIR/keyagent/agent-<hash of home>.sock, or /tmp/keyagent-$UID/ when "
        "XDG_RUNTIME_DIR is unset; the directory must be yours with mode 0700. A live agent on the socket is "
        "never replaced; a stale socket file is. The PIN/passphrase for unlocking at start comes from "
        "--pin-file/--passphrase-file or KEYAGENT_PIN/KEYAGENT_PASSPHRASE; without one the agent starts locked "
        "(keyagent unlock). Policy lives in HOME/agent.json (max_frame, max_connections, request_timeout, "
        "frame_timeout, idle_timeout, allow_uids, allow_gids, allow_ecdh, unlock_ttl, confirm_command, "
        "confirm_ops)."
    )
    p.add_argument("-D", "--foreground", action="store_true", help="stay in the foreground (systemd)")
    shells = p.add_mutually_exclusive_group()
    shells.add_argument("-s", "--sh", action="store_true", help="Bourne shell lines (default unless $SHELL is csh)")
    shells.add_argument("-c", "--csh", action="store_true", help="csh lines")
    shells.add_argument("--fish", action="store_true", help="fish lines")
    p.add_argument("--allow-uid", type=int, action="append", metavar="UID", help="also admit this uid")
    p.add_argument("--allow-gid", type=int, action="append", metavar="GID", help="also admit this primary gid")
    p.add_argument("--max-frame", type=int, metavar="BYTES", help="request frame cap (default 262144)")
    p.add_argument("--allow-ecdh", action="store_true", help="allow raw ECDH with the identity key (oracle!)")
    p.add_argument("--unlock-ttl", type=float, metavar="SECONDS", help="lock again this long after an unlock")
    p.add_argument("--pin-file", metavar="FILE", help="unlock at start with the PIN in this 0600 file")
    p.add_argument("--passphrase-file", metavar="FILE", help="unlock at start with the passphrase in this file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    add("stop", "stop the agent", _cmd_stop)
    add("status", "show the agent's state", _client_command(_status), json_out=True)
    p = add("lock", "lock the agent (secret-using requests are refused until unlock)", _client_command(_lock))
    p.add_argument("--password", action="store_true", help="lock with a password instead of dropping the PIN")
    p = add("unlock", "unlock with the PIN, passphrase or lock password", _client_command(_unlock))
    p.add_argument("--secret-file", metavar="FILE", help="read the secret from this 0600 file")
    p.add_argument("--force", action="store_true", help="allow the token's final PIN try")
    add("whoami", "show our Status identity (keys, key UID, share link, name/emoji/colour hash, contact code)",
        _cmd_whoami, json_out=True)
    p = add("bundle", "print our signed bundle (protobuf bytes, or --json)", _client_command(_bundle), json_out=True)
    p.add_argument("-o", "--out", metavar="FILE", help="write the protobuf bytes here")
    p = add("add-bundle", "store a peer's bundle (JSON or protobuf file)", _client_command(_add_bundle),
            json_out=True)
    p.add_argument("file", metavar="FILE")
    p = add("encrypt", "encrypt stdin for a peer; ProtocolMessage bytes on stdout", _client_command(_encrypt),
            json_out=True)
    p.add_argument("--to", required=True, metavar="IDENTITY", help="0x04…, compressed hex, zQ3… or status.app link")
    p.add_argument("--bundle", metavar="FILE", help="the peer's bundle (JSON or protobuf)")
    p.add_argument("-o", "--out", metavar="FILE")
    p.add_argument("--max-input", type=int, default=200 * 1024, help=argparse.SUPPRESS)
    p = add("decrypt", "decrypt a ProtocolMessage on stdin; payload on stdout", _client_command(_decrypt),
            json_out=True)
    p.add_argument("--from", dest="sender", required=True, metavar="IDENTITY")
    p.add_argument("-o", "--out", metavar="FILE")
    p.add_argument("--reply-out", metavar="FILE", help="write a reply the agent wants sent back (our bundle) here")
    p.add_argument("--no-confirm", action="store_true", help="do not confirm (keep the message key)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--max-input", type=int, default=255 * 1024, help=argparse.SUPPRESS)
    p = add("sign", "sign a 32-byte digest (hex) with the identity key", _client_command(_sign), json_out=True)
    p.add_argument("digest", metavar="HEX")
    add("sessions", "list sessions", _client_command(_sessions), json_out=True)
    add("rotate", "rotate the signed prekey now", _client_command(_rotate), json_out=True)
    p = add("confirm", "confirm processed messages (frees their keys)", _client_command(_confirm))
    p.add_argument("refs", nargs="+", metavar="REF", help="confirm refs in hex")
    add("release", "release the token so other programs can use it (like SIGHUP)", _client_command(_release))
