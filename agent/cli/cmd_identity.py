"""``keyagent inspect-key IDENTITY``: show a peer's Status key in every form, with its name, emoji and colour hash.

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

__all__ = ["register"]


def _cmd_inspect_key(args: argparse.Namespace) -> int:
    from agent.core.errors import BadIdentity
    from agent.status_identity import identity_text, peer_document

    try:
        doc = peer_document(args.identity, contact=not args.no_contact_code)
    except BadIdentity as exc:
        print(f"keyagent: BAD_IDENTITY: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(identity_text(doc))
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``inspect-key``."""
    p = subparsers.add_parser("inspect-key", parents=[common],
                              help="show a peer's key in every Status form with its name/emoji/colour hash")
    p.add_argument("identity", metavar="IDENTITY", help="0x04…, compressed hex, zQ3… or a status.app link")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-contact-code", action="store_true",
                   help="skip the contact-code topic/key (a 65356-round PBKDF2)")
    p.set_defaults(func=_cmd_inspect_key)
