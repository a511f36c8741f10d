"""BIP39 recovery phrase → 64-byte seed, exactly as status-go's ``extkeys.MnemonicSeed`` does it.

Why hashlib and not a BIP39 library: status-go derives from *any* phrase, checksum or not
(``MnemonicSeed`` validates nothing; ``api/backend_test.go`` restores twelve times "test"), while
bip-utils and ``mnemonic.Mnemonic.to_seed`` callers usually refuse a bad checksum first. The seed is one
``hashlib.pbkdf2_hmac`` call, so we do it ourselves and only *report* checksum problems
(:func:`check_phrase`). The English word list comes from Trezor's ``mnemonic`` package (MIT, no
dependencies) so that no word list is committed here.

Normalisation (a decision, documented in the facts note §1.1): surrounding and repeated whitespace is
collapsed to single ASCII spaces (what ``ConvertToRegularAccount`` and every Status client do) and the
words are lower-cased (Status clients only ever pass lower-case words; upper case would otherwise give a
silently different identity). Then NFKD, as BIP39 and status-go require.

Memory: the phrase arrives as ``str`` or ``bytearray``. Python cannot normalise Unicode without making
immutable ``str`` copies, and ``hashlib`` returns the seed as immutable ``bytes``; those copies are
unreachable after return but stay in freed memory until it is reused. What *can* be zeroed (the UTF-8
password buffer, the entropy used for the checksum, the returned seed once the caller is done) is zeroed.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import unicodedata

from ..errors import ProtocolError

__all__ = [
    "PBKDF2_ROUNDS",
    "MAX_PHRASE_CHARS",
    "PhraseError",
    "PhraseProblem",
    "normalize_phrase",
    "check_phrase",
    "phrase_to_seed",
    "english_wordlist",
]

PBKDF2_ROUNDS = 2048
MAX_PHRASE_CHARS = 1024  # 24 words of at most 8 letters fit in 216; anything far longer is not a phrase
_WORD_COUNTS = (12, 15, 18, 21, 24)


class PhraseError(ProtocolError):
    """A phrase that cannot be used at all (empty, too long, not text); the message never quotes it."""


class PhraseProblem(enum.Enum):
    """Why a phrase is not a valid English BIP39 mnemonic. Status derives from it anyway, so do we."""

    WORD_COUNT = "the phrase does not have 12, 15, 18, 21 or 24 words"
    UNKNOWN_WORD = "a word is not in the English BIP39 word list"
    BAD_CHECKSUM = "the phrase's BIP39 checksum does not match (a word may be mistyped or out of order)"


@functools.lru_cache(maxsize=1)
def english_wordlist() -> dict[str, int]:
    """Word → index for the 2048-word English list of Trezor's ``mnemonic`` package (loaded once)."""
    from mnemonic import Mnemonic  # deferred: it reads its word list file when instantiated

    words = Mnemonic("english").wordlist
    if len(words) != 2048:  # pragma: no cover - guards against a broken install
        raise RuntimeError("the English BIP39 word list does not have 2048 words")
    return {w: i for i, w in enumerate(words)}


def _as_text(phrase: str | bytes | bytearray) -> str:
    if isinstance(phrase, str):
        return phrase
    if isinstance(phrase, (bytes, bytearray)):
        try:
            return bytes(phrase).decode("utf-8")
        except UnicodeDecodeError:
            raise PhraseError("recovery phrase is not valid UTF-8") from None
    raise PhraseError("recovery phrase must be str, bytes or bytearray")


def normalize_phrase(phrase: str | bytes | bytearray) -> str:
    """Collapse whitespace, lower-case and NFKD-normalise; raise :class:`PhraseError` if empty or oversize."""
    text = _as_text(phrase)
    if len(text) > MAX_PHRASE_CHARS:
        raise PhraseError(f"recovery phrase is longer than {MAX_PHRASE_CHARS} characters")
    norm = unicodedata.normalize("NFKD", " ".join(text.split()).lower())
    if not norm:
        raise PhraseError("recovery phrase is empty")
    return norm


def check_phrase(phrase: str | bytes | bytearray) -> tuple[PhraseProblem, ...]:
    """Problems of the phrase as an English BIP39 mnemonic (empty tuple: valid), like ``ValidateMnemonic``."""
    words = normalize_phrase(phrase).split(" ")
    if len(words) not in _WORD_COUNTS:
        return (PhraseProblem.WORD_COUNT,)
    index = english_wordlist()
    if any(w not in index for w in words):
        return (PhraseProblem.UNKNOWN_WORD,)
    n_bits = 11 * len(words)
    cs_bits = n_bits // 33
    ent_bits = n_bits - cs_bits
    acc = 0
    for w in words:
        acc = (acc << 11) | index[w]
    ent = bytearray((acc >> cs_bits).to_bytes(ent_bits // 8, "big"))  # ent_bits is a multiple of 32
    try:
        want = hashlib.sha256(ent).digest()[0] >> (8 - cs_bits)
    finally:
        ent[:] = bytes(len(ent))
    got = acc & ((1 << cs_bits) - 1)
    return () if want == got else (PhraseProblem.BAD_CHECKSUM,)


def phrase_to_seed(phrase: str | bytes | bytearray, passphrase: str = "") -> bytearray:
    """PBKDF2-HMAC-SHA512(NFKD(phrase), NFKD("mnemonic"+passphrase), 2048) → 64-byte seed; no validation.

    Status always uses the empty passphrase; a non-empty one gives a different, non-Status identity.
    """
    if not isinstance(passphrase, str):
        raise PhraseError("BIP39 passphrase must be str")
    password = bytearray(normalize_phrase(phrase).encode("utf-8"))
    try:
        salt = unicodedata.normalize("NFKD", "mnemonic" + passphrase).encode("utf-8")
        return bytearray(hashlib.pbkdf2_hmac("sha512", password, salt, PBKDF2_ROUNDS, 64))
    finally:
        password[:] = bytes(len(password))
