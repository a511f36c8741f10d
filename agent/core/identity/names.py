"""Status's human checks of a chat key: three-word alias, emoji hash, colour hash and colour id.

Written from the algorithm description in the facts note (§3), using status-go's MPL-2.0 word and emoji
lists, which are shipped unmodified as separate data files in :mod:`.statusdata` (see its NOTICE.txt).
All four are functions of the public key only, so they are shown at pairing and contact import for
face-to-face comparison. None is collision resistant (the alias has < 2^32 values, the colour hash
re-colours repeats): they help a person notice a wrong key, they do not authenticate one.

The lists are read once from the installed package (like the BIP39 word list); nothing else touches disk.
"""

from __future__ import annotations

import functools
from importlib import resources

from .. import secp256k1

__all__ = [
    "EMOJI_ALPHABET_LEN",
    "EMOJI_HASH_LEN",
    "alias",
    "alias_from_seed",
    "emoji_hash",
    "color_hash",
    "color_id",
    "visual_fields",
]

_POLY = 0xB8  # taps at bits 3, 4, 5 and 7
_MASK64 = (1 << 64) - 1
EMOJI_ALPHABET_LEN = 2757  # 160 bits in 14 symbols need at least 2757 (status-go trims its 2800-line list)
EMOJI_HASH_LEN = 14
_COLOR_UNITS = 5
_COLORS = 32
_COLOR_ID_MOD = 11  # status-go: colorPalletLength (12) - 1


@functools.lru_cache(maxsize=None)
def _lines(name: str) -> tuple[str, ...]:
    text = resources.files("agent.core.identity.statusdata").joinpath(name).read_text(encoding="utf-8")
    # split on "\n" only (Go's bufio.ScanLines); str.splitlines would also split on U+2028 and friends
    return tuple(line.removesuffix("\r") for line in text.split("\n")[:-1])


def _adjectives() -> tuple[str, ...]:
    return _lines("alias_adjectives.txt")


def _animals() -> tuple[str, ...]:
    return _lines("alias_animals.txt")


def _emojis() -> tuple[str, ...]:
    return _lines("emojis.txt")[:EMOJI_ALPHABET_LEN]


def _lfsr_next(state: int) -> int:
    bit = 0
    for i in range(64):
        if _POLY >> i & 1:
            bit ^= state >> i
    return ((state << 1) | (bit & 1)) & _MASK64


def alias_from_seed(seed: int) -> str:
    """Three words from a 64-bit seed: two adjectives and an animal picked by a Fibonacci LFSR."""
    if not 0 <= seed <= _MASK64:
        raise ValueError("alias seed must be an unsigned 64-bit integer")
    adjectives, animals = _adjectives(), _animals()
    s1 = _lfsr_next(seed)
    s2 = _lfsr_next(s1)
    s3 = _lfsr_next(s2)
    return f"{adjectives[s1 % len(adjectives)]} {adjectives[s2 % len(adjectives)]} {animals[s3 % len(animals)]}"


def alias(pub: bytes) -> str:
    """Status's generated name of a key: the seed is the low 64 bits of X (Go's ``uint64(X.Int64())``)."""
    x = int.from_bytes(secp256k1.decompress(pub)[1:33], "big")
    return alias_from_seed(x & _MASK64)


def _to_base(value: int, base: int) -> list[int]:
    """Digits of ``value`` in ``base``, most significant first; 0 is the single digit [0] (ToBigBase)."""
    digits = [value % base]
    value //= base
    while value:
        digits.append(value % base)
        value //= base
    return digits[::-1]


def _slice(compressed: bytes, low: int, high: int, mask: int, shift: int) -> int:
    return (int.from_bytes(compressed[low:high], "big") & mask) >> shift


def emoji_hash(pub: bytes) -> list[str]:
    """14 emojis from the 160 bits that follow the first 12 bits of the compressed key."""
    comp = secp256k1.compress(pub)
    value = _slice(comp, 1, 22, ((1 << 164) - 1) & ~0xF, 4)  # 21 bytes, top and bottom nibble masked
    digits = _to_base(value, EMOJI_ALPHABET_LEN)
    digits = [0] * (EMOJI_HASH_LEN - len(digits)) + digits
    alphabet = _emojis()
    return [alphabet[d] for d in digits]


def _color_hash(value: int, units: int, colors: int) -> list[list[int]]:
    """Digits of ``value`` in base units·colors as [length, colour]; repeats get the next colour."""
    out: list[list[int]] = []
    for d in _to_base(value, units * colors):
        length, colour = d // colors + 1, d % colors
        if out and colour == out[-1][1]:  # compared with the previous colour *after* its own adjustment
            colour = (colour + 1) % colors
        out.append([length, colour])
    return out


def color_hash(pub: bytes) -> list[list[int]]:
    """``[segment length 1-5, colour index 0-31]`` pairs from 80 bits of the compressed key; a colour
    equal to the previous (already adjusted) one is bumped to the next, so neighbours always differ."""
    comp = secp256k1.compress(pub)
    return _color_hash(_slice(comp, 21, 32, ((1 << 84) - 1) & ~0xF, 4), _COLOR_UNITS, _COLORS)


def color_id(pub: bytes) -> int:
    """``identity.ToColorID``: the 65-byte uncompressed key read as one integer, mod 11."""
    return int.from_bytes(secp256k1.decompress(pub), "big") % _COLOR_ID_MOD


def visual_fields(pub: bytes) -> dict[str, object]:
    """The face-to-face checks for display (pairing, contact import): alias, emoji hash as one string,
    colour hash and colour id."""
    return {
        "alias": alias(pub),
        "emoji_hash": " ".join(emoji_hash(pub)),
        "color_hash": color_hash(pub),
        "color_id": color_id(pub),
    }
