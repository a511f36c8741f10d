"""``keyagent contact [import CODE]``: exchange contacts face to face (contact code text and QR code).

``keyagent contact`` prints our signed bundle (this device and our approved devices) as a compact contact code
(``kac1`` + Base58Check, :mod:`agent.daemon.contact_card`), a QR code of it in the terminal, and our fingerprint
(chat key, three-word name, emoji hash, safety number); ``--png FILE`` / ``--svg FILE`` also write the QR code
as an image. ``keyagent contact import CODE`` (or ``keyagent contact --import CODE``; ``-`` reads stdin)
checks the code here first - prefix, Base58 alphabet, checksum, protobuf, and the bundle's signature by the
identity key it names - and only then hands the bundle to the agent, which verifies it again and stores it.
It prints the peer's fingerprint so both people can compare it with what the other's screen shows: a code
passed through an untrusted channel can only be swapped for a whole other identity, which the comparison
catches. A damaged or forged code is refused with a clear message and nothing is stored.

Exit codes: 0 ok, 1 the agent refused, 2 bad input (a damaged, forged or unreadable code), 3 no agent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from agent.cli.common import EXIT_INPUT, InputError, client_command, fail, plain_doc
from agent.client import AgentClient
from agent.daemon.contact_card import PREFIX

__all__ = ["register", "fingerprint", "read_code"]

MAX_CODE_INPUT = 8192  # a code is ~270-600 characters; anything much longer is not a contact code


def fingerprint(identity: bytes) -> dict[str, Any]:
    """What two people compare face to face: the Status chat key (zQ3…), Status's three-word name and emoji
    hash (what the Status app shows), and our 60-digit safety number (easy to read aloud)."""
    from agent.core import secp256k1
    from agent.core.identity import visual_fields
    from agent.core.identity.formats import zq3_encode
    from agent.daemon.contact_card import safety_number

    doc: dict[str, Any] = {"identity": identity.hex(), "chat_key": zq3_encode(identity),
                           "public_key": "0x" + secp256k1.decompress(identity).hex(),
                           "safety_number": safety_number(identity)}
    vf = visual_fields(identity)
    doc.update(name=vf["alias"], emoji_hash=vf["emoji_hash"])
    return doc


def _fingerprint_lines(doc: dict[str, Any]) -> list[str]:
    lines = [f"  chat key:      {doc['chat_key']}"]
    if "name" in doc:
        lines += [f"  name:          {doc['name']}", f"  emoji hash:    {doc['emoji_hash']}"]
    lines.append(f"  safety number: {doc['safety_number']}")
    return lines


def read_code(text: str) -> str:
    """The code argument, or stdin for ``-`` (bounded)."""
    if text != "-":
        return text
    data = sys.stdin.read(MAX_CODE_INPUT + 1)
    if len(data) > MAX_CODE_INPUT:
        raise InputError(f"input is longer than {MAX_CODE_INPUT} characters: not a contact code")
    return data


def _write_file(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # public data: a contact code
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc


def _show(args: argparse.Namespace, c: AgentClient) -> int:
    from agent.core.wire import decode_bundle
    from agent.daemon.contact_card import encode_card, render_qr

    if args.import_code is not None:
        return _import(args, c, args.import_code)
    bundle = c.bundle()
    code = encode_card(bundle)
    identity = bytes(decode_bundle(bundle).identity)
    for path, kind in ((args.png, "png"), (args.svg, "svg")):
        if path:
            _write_file(path, render_qr(code, kind))
    if args.json:
        doc = {"contact_code": code, "fingerprint": fingerprint(identity),
               "installations": sorted(decode_bundle(bundle).signed_pre_keys.keys())}
        print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    if not args.no_qr:
        sys.stdout.write(render_qr(code, "text").decode("utf-8"))
    print(code)
    print("our fingerprint (the other person's `keyagent contact import` must show the same):")
    for line in _fingerprint_lines(fingerprint(identity)):
        print(line)
    for path in (args.png, args.svg):
        if path:
            print(f"QR code written to {path}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace, c: AgentClient, raw: str) -> int:
    from agent.core.errors import BadSignature, ProtocolError
    from agent.daemon.contact_card import decode_card

    try:
        contact = decode_card(read_code(raw))  # verified here: a bad code never reaches the agent
    except BadSignature as exc:  # well-formed, but not signed by the key it names: forged or altered
        raise InputError(f"invalid contact code: not signed by the identity key it names ({exc})") from exc
    except ProtocolError as exc:
        raise InputError(f"invalid contact code: {exc}") from exc
    ours = c.identity()
    own = contact.identity == ours.identity_public_key
    stored = False
    if not args.no_store:
        stored_identity = c.add_bundle(contact.bundle)  # the agent verifies again before storing
        if stored_identity != contact.identity:  # cannot happen unless the agent is not the one we think
            raise InputError("the agent stored the bundle under another identity")
        stored = True
    doc: dict[str, Any] = {"fingerprint": fingerprint(contact.identity), "installations": list(contact.installations),
           "own_identity": own, "stored": stored}
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    this_device = own and set(contact.installations) <= {ours.installation_id}
    if this_device:
        print("This is THIS device's own contact code: nothing to import.")
    elif own:
        print("This code is YOUR OWN identity: another device of yours.")
    else:
        print("Contact code verified (signed by the identity key it names).")
    for line in _fingerprint_lines(doc["fingerprint"]):
        print(line)
    print(f"  installations: {', '.join(contact.installations)}")
    if this_device:
        return 0
    where = "the other device" if own else "the other person's screen"
    print(f"Compare the chat key, name/emoji hash or safety number with {where} (`keyagent contact` there) "
          "before trusting it.")
    if own and stored:
        waiting = [i for i in contact.installations if i != ours.installation_id]
        print(f"To pair it: keyagent devices approve {waiting[0]}  (and on that device, import this device's "
              "code and approve it too: pairing is per direction)")
    elif stored:
        print("Stored: messages to this contact now start a session with its prekey.")
    else:
        print("Not stored (--no-store).")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    """``contact`` → our code; ``contact import CODE`` / ``contact kac1…`` / ``--import CODE`` → import."""
    target, code = args.target, args.code
    if target == "import":
        if code is None:
            return fail("contact import needs the CODE (or - to read it from stdin)", EXIT_INPUT)
        args.import_code = code
    elif target is not None:
        if code is not None:
            return fail(f"unexpected argument {code!r}", EXIT_INPUT)
        if not target.strip().startswith(PREFIX) and target != "-":
            return fail(f"{target!r} is neither `import` nor a contact code ({PREFIX}…); for a peer's chat "
                        "key use keyagent inspect-key", EXIT_INPUT)
        args.import_code = target  # a contact code pasted without `import`
    return client_command(_show)(args)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``keyagent contact [import CODE]`` (one parser: argparse cannot mix an optional sub-command with
    the plain form's options cleanly, so ``import`` is a keyword positional)."""
    p = subparsers.add_parser("contact", parents=[common], help=_HELP, description=plain_doc(__doc__),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", default=None, metavar="import",
                   help=f"`import CODE`: verify and add a contact code ({PREFIX}…)")
    p.add_argument("code", nargs="?", default=None, metavar="CODE",
                   help="the contact code (spaces and line breaks are ignored; - reads stdin)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--socket", metavar="PATH", help="agent socket (default: see `keyagent --help`)")
    p.add_argument("--png", metavar="FILE", help="also write our QR code as PNG")
    p.add_argument("--svg", metavar="FILE", help="also write our QR code as SVG")
    p.add_argument("--no-qr", action="store_true", help="do not print our QR code in the terminal")
    p.add_argument("--import", dest="import_code", metavar="CODE", help="same as `keyagent contact import CODE`")
    p.add_argument("--no-store", action="store_true", help="import: only verify and show the fingerprint")
    p.set_defaults(func=_dispatch)


_HELP = "our contact code and QR code; `contact import CODE` verifies and adds a contact"
