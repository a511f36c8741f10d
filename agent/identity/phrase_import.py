"""``keyagent init --from-phrase``: provision the home with the chat key a recovery phrase derives.

The phrase is read by :mod:`agent.identity.phrase_input`, derived by :mod:`agent.core.identity`, stored by
:func:`backends.home.provision_identity`, and its key UID recorded by :mod:`agent.identity.record`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from agent.core.identity import DerivedIdentity
from agent.identity.phrase_input import Mode, read_and_derive
from agent.identity.record import record_phrase_identity
from backends.home_config import config_path

__all__ = ["IMPORTED_NOTICE", "PhraseImport", "provision_from_phrase", "init_from_phrase"]


def provision_from_phrase(home: str, backend_kind: str, derived: DerivedIdentity, **provision: Any) -> dict[str, Any]:
    """Provision ``home`` with the phrase-derived chat key (backends.home.provision_identity) and record its UID.

    The key goes into the token as a SENSITIVE, non-EXTRACTABLE object (which the token marks as imported,
    i.e. not NEVER_EXTRACTABLE), or into the software key file. If recording the UID fails the provisioned
    home is left as it is (its key is right; ``record_phrase_identity`` can be run again) and the error raised.
    The caller still wipes ``derived``; the one immutable copy made here for the backend is dropped at once.
    """
    from backends.home import provision_identity

    secret = bytes(derived.chat_secret)  # the backends take bytes; Python cannot zero this copy, only drop it
    try:
        provision_identity(home, backend_kind, import_secret=secret, **provision)
    finally:
        del secret
    return record_phrase_identity(home, derived)


#: What the user is told after a token import: the token itself records the key as imported, so a later audit
#: (pkcs11-tool --list-objects) shows it SENSITIVE but not "never extractable" / "local", and that is the truth.
IMPORTED_NOTICE = (
    "the chat key was IMPORTED into the token: it is stored sensitive and non-extractable, but it is not "
    '"never extractable": it existed outside the token (derived from your recovery phrase, which can '
    "re-create it anywhere). Keep the phrase offline."
)


@dataclass(frozen=True)
class PhraseImport:
    """What ``keyagent init --from-phrase`` reports: public facts only."""

    config: dict[str, Any]
    public_key: bytes  # 33-byte compressed chat key
    key_uid: str
    problems: tuple[str, ...]  # phrase problems (bad checksum, unknown word, word count): derived anyway


def init_from_phrase(
    home: str,
    backend_kind: str,
    *,
    stdin: BinaryIO | None = None,
    mode: Mode = "auto",
    pinentry_program: str | None = None,
    warn: Callable[[str], None] | None = None,
    **provision: Any,
) -> PhraseImport:
    """Read a recovery phrase (stdin / pinentry / terminal, never argv or env), derive the chat key exactly as
    Status does, provision the home with it, record its key UID; the phrase and seed buffers are zeroed as soon
    as the key is derived, the chat secret as soon as it is stored (also on failure).

    ``warn(text)`` receives one line per phrase problem (default: stderr); a bad checksum warns but derives, as
    Status does. ``provision`` goes to :func:`backends.home.provision_identity` (module, token, pin,
    passphrase, ...). Nothing here logs: the only output is ``warn`` lines, which never quote the phrase.
    """
    import sys
    import warnings

    from agent.core.identity import PhraseWarning
    def _stderr(text: str) -> None:
        print(f"keyagent: warning: {text}", file=sys.stderr)

    say = warn or _stderr
    if os.path.exists(config_path(home)):
        from backends.errors import KeyExists

        raise KeyExists(f"{config_path(home)} already exists; this home is provisioned")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PhraseWarning)  # reported once below, from derived.problems
        derived = read_and_derive(stdin, mode=mode, pinentry_program=pinentry_program)
    try:
        problems = tuple(p.value + "; deriving anyway, as Status does" for p in derived.problems)
        for line in problems:
            say(line)
        cfg = provision_from_phrase(home, backend_kind, derived, **provision)
        return PhraseImport(cfg, derived.chat_public_key, derived.key_uid, problems)
    finally:
        derived.wipe()
