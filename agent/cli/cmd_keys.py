"""``keyagent init`` and ``keyagent migrate``: create the home's identity, or move it onto a token.

Unattended use: the PIN comes from ``--pin-file`` or ``KEYAGENT_PIN``, the passphrase from ``--passphrase-file``
or ``KEYAGENT_PASSPHRASE``; with neither, pinentry (when a display/terminal exists) or a terminal prompt asks.
The PKCS#11 module path is taken from the command line here and stored in ``<home>/config.json``; nothing a
client sends can change it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from agent.cli.common import EXIT_INPUT, InputError, fail, fail_coded

__all__ = ["register"]


def _secret(path: str | None, env: str, what: str, *, confirm: bool = False, pinentry: bool = False) -> str:
    from backends.errors import BackendConfigError
    from backends.pin import ask_pinentry, pinentry_available, read_secret_file

    if path:
        return read_secret_file(path)
    value = os.environ.get(env)
    if value:
        return value
    if pinentry and pinentry_available():
        got = ask_pinentry("pinentry", f"keyagent needs the {what}")
        if got:
            return got
        raise BackendConfigError(f"no {what} given (pinentry cancelled)")
    if sys.stdin.isatty():
        first = getpass.getpass(f"{what}: ")
        if confirm and getpass.getpass(f"{what} again: ") != first:
            raise BackendConfigError(f"the two {what}s differ")
        if first:
            return first
    raise BackendConfigError(f"no {what}: use --{'pin' if 'PIN' in env else 'passphrase'}-file or ${env}")


def _cmd_join(args: argparse.Namespace) -> int:
    """``init --store URL --join``: another agent of the identity whose state is in that store."""
    from agent.daemon.store.shared_home import join_store

    if args.backend != "pkcs11" or not args.module or not args.token:
        return fail("init --join needs --backend pkcs11 --module PATH --token TOKEN (the token that holds the "
                    "store's identity key)", EXIT_INPUT)
    if args.adopt_id or args.adopt_label or args.from_phrase:
        return fail("init --join takes the identity key the store names; it adopts or imports nothing else",
                    EXIT_INPUT)
    pin = _secret(args.pin_file, "KEYAGENT_PIN", "token user PIN", pinentry=True)
    cfg = join_store(args.home, args.store, module=args.module, token=args.token, pin=pin,
                     os_locking=args.os_locking)
    print(f"home: {args.home}")
    print(f"backend: {cfg['backend']}")
    print(f"identity public key: {cfg['identity_public_key']}")
    print(f"store: postgresql (joined; {cfg['store']['url']})")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from backends.home import provision_identity

    if args.join:
        if not args.store:
            return fail("--join needs --store URL", EXIT_INPUT)
        return _cmd_join(args)
    if args.store:
        from agent.daemon.store.location import check_store_url

        check_store_url(args.store)  # refused before anything is provisioned
    kw: dict[str, Any] = {}
    if args.backend == "pkcs11":
        if not args.module or not args.token:
            return fail("init --backend pkcs11 needs --module PATH and --token TOKEN", EXIT_INPUT)
        kw.update(module=args.module, token=args.token, os_locking=args.os_locking, force=args.force,
                  pin=_secret(args.pin_file, "KEYAGENT_PIN", "token user PIN", pinentry=True))
        if args.keyring:
            kw.update(store_pin_in_keyring=True, keyring_backend=args.keyring_backend)
        if args.adopt_id:
            try:
                kw["adopt_id"] = bytes.fromhex(args.adopt_id)
            except ValueError:
                return fail("--adopt-id must be hex", EXIT_INPUT)
        if args.adopt_label:
            kw["adopt_label"] = args.adopt_label
    else:
        if args.adopt_id or args.adopt_label:
            return fail("adopting a key needs --backend pkcs11", EXIT_INPUT)
        if args.keyring:
            kw.update(use_keyring=True, keyring_backend=args.keyring_backend)
        else:
            kw["passphrase"] = _secret(args.passphrase_file, "KEYAGENT_PASSPHRASE", "key-file passphrase",
                                       confirm=True)
        if args.scrypt_n:
            kw["scrypt_n"] = args.scrypt_n
    if args.from_phrase:  # issue 9: a Status recovery phrase, read from stdin/pinentry/terminal only
        if "adopt_id" in kw or "adopt_label" in kw:
            return fail("--from-phrase imports a key; it cannot also adopt one", EXIT_INPUT)
        from agent.identity.phrase_import import IMPORTED_NOTICE, init_from_phrase

        def problem(text: str) -> None:
            """Each phrase problem: a mistyped word would silently make another identity, so refuse by default.
            Raising here stops the import before anything is provisioned (the phrase buffers are wiped)."""
            reason = text.split(";")[0]
            if not args.accept_bad_phrase:
                raise InputError(f"{reason}; nothing was created", code="BAD_PHRASE",
                                 fix="check the words; Status itself accepts such a phrase: rerun with "
                                     "--accept-bad-phrase to import the identity it derives anyway")
            print(f"keyagent: warning: {reason}; imported anyway (--accept-bad-phrase)", file=sys.stderr)

        try:
            imp = init_from_phrase(args.home, args.backend, mode=args.phrase_from, warn=problem, **kw)
        except InputError as exc:
            return fail_coded(exc.code, str(exc), EXIT_INPUT, exc.fix)
        cfg = imp.config
        if cfg["backend"] == "pkcs11":
            print(f"keyagent: note: {IMPORTED_NOTICE}", file=sys.stderr)
    else:
        cfg = provision_identity(args.home, args.backend, **kw)
    if args.store:
        from agent.daemon.store.shared_home import attach_new_store

        cfg = attach_new_store(args.home, cfg, args.store, secret=kw.get("pin") or kw.get("passphrase") or "")
    print(f"home: {args.home}")
    print(f"backend: {cfg['backend']}")
    print(f"identity public key: {cfg['identity_public_key']}")
    if cfg["backend"] == "pkcs11":
        p = cfg["pkcs11"]
        print(f"token: {p['token_label']} (serial {p['token_serial']}), identity key id {p['identity_id']} "
              f"({p['identity_origin']})")
    if args.from_phrase:
        from agent.core.identity import visual_fields, zq3_encode

        pub33 = bytes.fromhex(cfg["identity_public_key"])
        vis = visual_fields(pub33)
        print(f"chat key: {zq3_encode(pub33)}")
        print(f"name: {vis['alias']}  {vis['emoji_hash']}  (compare with the name Status shows for this phrase)")
        print(f"key UID: {cfg['status']['key_uid']} (Status chat key imported from the recovery phrase)")
    print("signed prekey: version 1")
    if args.store:
        print(f"store: postgresql ({args.store})")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from backends.home import migrate_to_token
    from backends.pin import chain_sources, env_source, file_source

    pin = _secret(args.pin_file, "KEYAGENT_PIN", "token user PIN", pinentry=True)
    source = chain_sources(file_source(args.passphrase_file) if args.passphrase_file else None,
                           env_source("KEYAGENT_PASSPHRASE"),
                           (lambda what: getpass.getpass(f"{what}: ")) if sys.stdin.isatty() else None)
    cfg = migrate_to_token(args.home, module=args.module, token=args.token, pin=pin, passphrase_source=source,
                           os_locking=args.os_locking, remove_software_key=args.remove_software_key)
    p = cfg["pkcs11"]
    print(f"identity {cfg['identity_public_key']} now on token {p['token_label']} (serial {p['token_serial']})")
    print("note: the key was IMPORTED. It is stored sensitive and non-extractable from now on, but it is not "
          "'never extractable': it existed outside the token, and the token records that (NEVER_EXTRACTABLE=false).")
    if args.remove_software_key:
        print("the software key file was deleted (copies in backups or on disk blocks may remain)")
    else:
        print("the software key file still holds the key: delete it (and its backups) to gain anything, "
              "or rerun with --remove-software-key")
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``init`` and ``migrate``."""
    p = subparsers.add_parser("init", parents=[common], help="create the identity key and first signed prekey")
    p.add_argument("--backend", choices=("pkcs11", "software"), required=True,
                   help="pkcs11: the key lives in a token (--module, --token); software: a passphrase-encrypted file")
    p.add_argument("--module", help="PKCS#11 module path (stored in the home's config)")
    p.add_argument("--token", help="token: pkcs11: URI (RFC 7512), serial:XXX, label:NAME or a label")
    p.add_argument("--pin-file", help="file (mode 0600) holding the token user PIN; else $KEYAGENT_PIN")
    p.add_argument("--adopt-id", help="use the existing key pair with this CKA_ID (hex) as the identity")
    p.add_argument("--adopt-label", help="use the existing key pair with this CKA_LABEL as the identity")
    p.add_argument("--force", action="store_true",
                   help="accept an adopted private key that is extractable or not sensitive")
    p.add_argument("--os-locking", action="store_true",
                   help="initialise the module with CKF_OS_LOCKING_OK (its own mutexes)")
    p.add_argument("--passphrase-file", help="file (0600) holding the key-file passphrase; else $KEYAGENT_PASSPHRASE")
    p.add_argument("--keyring", action="store_true", help="software: keep the key-file key in the OS keyring; pkcs11: keep the PIN there (opt-in)")
    p.add_argument("--keyring-backend", help="keyring backend class, e.g. keyrings.alt.file.PlaintextKeyring")
    p.add_argument("--scrypt-n", type=int, help=argparse.SUPPRESS)  # tests only: a cheaper scrypt
    p.add_argument("--from-phrase", action="store_true",
                   help="import the chat key of a Status recovery phrase (m/43'/60'/1581'/0'/0, as Status derives "
                        "it); the phrase is read from piped stdin, pinentry or the terminal, never argv/env")
    p.add_argument("--accept-bad-phrase", action="store_true",
                   help="import even when the phrase has an unknown word, a bad checksum or an odd word count (Status "
                        "derives an identity from it anyway); by default such a phrase is refused")
    p.add_argument("--phrase-from", choices=("auto", "stdin", "pinentry", "tty"), default="auto",
                   help="where --from-phrase reads the phrase (auto: pinentry/terminal when stdin is a terminal, "
                        "else stdin)")
    p.add_argument("--store", metavar="URL",
                   help="keep the state in PostgreSQL (a libpq postgresql:// URL without a password: use a 0600 "
                        "passfile) instead of state.db; several agents of the identity can share it")
    p.add_argument("--join", action="store_true",
                   help="with --store: add an agent to the identity whose state is already there (the same token "
                        "key, checked against the store's record); no new key is made")
    p.set_defaults(func=_cmd_init)

    m = subparsers.add_parser("migrate", parents=[common],
                              help="move a software identity onto a PKCS#11 token (as an imported key)")
    m.add_argument("--module", required=True, help="PKCS#11 module path")
    m.add_argument("--token", required=True, help="token selector (URI, serial:, label:, or a label)")
    m.add_argument("--pin-file", help="file (0600) holding the token user PIN; else $KEYAGENT_PIN")
    m.add_argument("--passphrase-file", help="file (0600) holding the key-file passphrase")
    m.add_argument("--os-locking", action="store_true", help="initialise the module with CKF_OS_LOCKING_OK")
    m.add_argument("--remove-software-key", action="store_true", help="delete the software key file afterwards")
    m.set_defaults(func=_cmd_migrate)
