"""Recovery phrase → the Status chat key and the facts Status records beside it.

status-go (``api/defaults.go``) derives, from the BIP39 seed with an *empty* passphrase:
the chat key ``m/43'/60'/1581'/0'/0`` (the identity key IK), the encryption key ``m/43'/60'/1581'/1'/0``
(its public key hex is Status's database password), the EIP-1581 root, the wallet root and the first
wallet account. The key UID is ``"0x" + hex(SHA-256(uncompressed master public key))``; it needs the
master key, so it can only be computed at import time and must be recorded then.

A phrase with a bad checksum still derives, as in status-go; the problem is returned in
:attr:`DerivedIdentity.problems` and also raised as a :class:`PhraseWarning` through :mod:`warnings`
(whose text never contains the phrase). The phrase and seed are never logged or kept.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

from .. import secp256k1
from .bip32 import ExtendedKey, derive_path, master_key
from .bip39 import PhraseProblem, check_phrase, phrase_to_seed

__all__ = [
    "PATHS",
    "CHAT_PATH",
    "ENCRYPTION_PATH",
    "PhraseWarning",
    "DerivedIdentity",
    "key_uid",
    "derive_identity",
    "derive_secrets",
]

PATHS: dict[str, str] = {
    "wallet_root": "m/44'/60'/0'/0",
    "eip1581_root": "m/43'/60'/1581'",
    "chat": "m/43'/60'/1581'/0'/0",
    "default_wallet": "m/44'/60'/0'/0/0",
    "encryption": "m/43'/60'/1581'/1'/0",
}
CHAT_PATH = PATHS["chat"]  # hardened at the key-type level, despite status-go's code comment
ENCRYPTION_PATH = PATHS["encryption"]


class PhraseWarning(UserWarning):
    """The phrase is not a valid English BIP39 mnemonic, but Status derives from it anyway."""


def key_uid(master_public_key: bytes) -> str:
    """Status key UID: ``"0x" + hex(sha256(65-byte uncompressed key))`` of the master key (or, for an
    account imported from a raw private key, of that key itself)."""
    return "0x" + hashlib.sha256(secp256k1.decompress(master_public_key)).hexdigest()


@dataclass(eq=False)
class DerivedIdentity:
    """The chat secret (zeroable) and the public facts recorded with it at import."""

    chat_secret: bytearray
    chat_public_key: bytes  # 33 bytes compressed
    master_public_key: bytes  # 65 bytes uncompressed
    encryption_public_key: bytes  # 65 bytes uncompressed (m/43'/60'/1581'/1'/0)
    key_uid: str
    problems: tuple[PhraseProblem, ...]

    def wipe(self) -> None:
        """Zero the chat secret once it has been stored (in the token or the key file)."""
        self.chat_secret[:] = bytes(len(self.chat_secret))

    def __repr__(self) -> str:  # never print the secret, even in a traceback or a debugger
        return f"DerivedIdentity(chat_public_key={self.chat_public_key.hex()}, key_uid={self.key_uid})"


def _report(problems: tuple[PhraseProblem, ...]) -> None:
    for p in problems:
        warnings.warn(PhraseWarning(p.value + "; deriving anyway, as Status does"), stacklevel=3)


def derive_secrets(
    phrase: str | bytes | bytearray, paths: dict[str, str], passphrase: str = ""
) -> tuple[bytes, dict[str, bytearray]]:
    """Master public key (65 bytes) and the 32-byte secrets at ``paths`` (name → path).

    The caller owns the returned bytearrays and must wipe them.
    """
    seed = phrase_to_seed(phrase, passphrase)
    master: ExtendedKey | None = None
    out: dict[str, bytearray] = {}
    try:
        master = master_key(seed)
        master_pub = master.public_key(False)
        for name, path in paths.items():
            k = derive_path(master, path)
            out[name] = bytearray(k.secret)
            k.wipe()
    except BaseException:
        for v in out.values():
            v[:] = bytes(len(v))
        raise
    finally:
        seed[:] = bytes(len(seed))
        if master is not None:
            master.wipe()
    return master_pub, out


def derive_identity(phrase: str | bytes | bytearray, passphrase: str = "") -> DerivedIdentity:
    """Derive exactly what Status derives from ``phrase``; a bad checksum warns but still derives.

    ``passphrase`` exists for the upstream test vectors; Status itself always uses ``""``.
    """
    problems = check_phrase(phrase)
    master_pub, secrets = derive_secrets(phrase, {"chat": CHAT_PATH, "encryption": ENCRYPTION_PATH}, passphrase)
    chat = secrets["chat"]
    enc = secrets["encryption"]
    try:
        enc_pub = secp256k1.decompress(_pub(enc))
        ident = DerivedIdentity(
            chat_secret=chat,
            chat_public_key=_pub(chat),
            master_public_key=master_pub,
            encryption_public_key=enc_pub,
            key_uid=key_uid(master_pub),
            problems=problems,
        )
    except BaseException:
        chat[:] = bytes(len(chat))
        raise
    finally:
        enc[:] = bytes(len(enc))
    _report(problems)
    return ident


def _pub(secret: bytearray) -> bytes:
    return ExtendedKey(secret, bytearray(32)).public_key(True)
