"""BIP39 checks and seed, BIP32 derivation, wiping, and the bad-input paths of both."""

from __future__ import annotations

import hashlib
import unicodedata
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mnemonic import Mnemonic

from agent.core.errors import MalformedKey, ProtocolError
from agent.core.identity import (
    CHAT_PATH,
    DerivedIdentity,
    PathError,
    PhraseError,
    PhraseProblem,
    PhraseWarning,
    check_phrase,
    derive_child,
    derive_identity,
    derive_path,
    master_key,
    normalize_phrase,
    parse_path,
    phrase_to_seed,
)
from agent.core.identity.bip32 import HARDENED, ExtendedKey
from agent.core.identity.bip39 import english_wordlist

ABANDON = "abandon " * 11 + "about"
ABANDON_SEED = (
    "5eb00bbddcf069084889a8ab9155568165f5c453ccb85e70811aaed6f6da5fc19a5ac40b389cd370d086206dec8aa6c43daea6690f"
    "20ad3d8d48b2d2ce9e38e4"
)
TREZOR = Mnemonic("english")  # the reference implementation, used as an oracle only
WORDS = sorted(english_wordlist(), key=english_wordlist().__getitem__)


def test_valid_phrase_has_no_problems() -> None:
    assert check_phrase(ABANDON) == ()
    assert check_phrase("zoo " * 23 + "vote") == ()  # 24 words, 8 checksum bits


def test_problems_are_reported() -> None:
    assert check_phrase("test " * 12) == (PhraseProblem.BAD_CHECKSUM,)
    assert check_phrase("abandon " * 12) == (PhraseProblem.BAD_CHECKSUM,)
    assert check_phrase("abandon " * 11) == (PhraseProblem.WORD_COUNT,)
    assert check_phrase("abandon " * 13) == (PhraseProblem.WORD_COUNT,)
    assert check_phrase("abandon " * 11 + "aboutt") == (PhraseProblem.UNKNOWN_WORD,)
    assert check_phrase("abandon " * 11 + "abou") == (PhraseProblem.UNKNOWN_WORD,)  # prefixes are not words


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([12, 15, 18, 21, 24]).flatmap(lambda n: st.lists(st.sampled_from(WORDS), min_size=n, max_size=n)))
def test_checksum_agrees_with_trezor(words: list[str]) -> None:
    phrase = " ".join(words)
    assert (check_phrase(phrase) == ()) == TREZOR.check(phrase)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([16, 20, 24, 28, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_seed_agrees_with_trezor(entropy: bytes) -> None:
    phrase = TREZOR.to_mnemonic(entropy)
    assert check_phrase(phrase) == ()
    assert bytes(phrase_to_seed(phrase)) == TREZOR.to_seed(phrase, "")
    assert bytes(phrase_to_seed(phrase, "TREZOR")) == TREZOR.to_seed(phrase, "TREZOR")


def test_seed_known_answer_and_input_types() -> None:
    assert bytes(phrase_to_seed(ABANDON)).hex() == ABANDON_SEED
    assert bytes(phrase_to_seed(bytearray(ABANDON.encode()))).hex() == ABANDON_SEED
    assert bytes(phrase_to_seed(ABANDON.encode())).hex() == ABANDON_SEED


def test_whitespace_and_case_are_normalised() -> None:
    messy = "  ABANDON\tabandon  abandon\nabandon abandon abandon abandon abandon abandon abandon abandon About \r\n"
    assert normalize_phrase(messy) == ABANDON
    assert bytes(phrase_to_seed(messy)).hex() == ABANDON_SEED


def test_nfkd_is_applied_to_phrase_and_passphrase() -> None:
    composed, decomposed = "ni\u00f1o caf\u00e9", "nin\u0303o cafe\u0301"
    assert unicodedata.normalize("NFC", decomposed) == composed
    assert phrase_to_seed(composed) == phrase_to_seed(decomposed)
    assert phrase_to_seed(ABANDON, "\u00e9") == phrase_to_seed(ABANDON, "e\u0301")
    want = hashlib.pbkdf2_hmac("sha512", decomposed.encode(), b"mnemonic", 2048, 64)
    assert bytes(phrase_to_seed(composed)) == want


def test_bad_phrase_inputs_raise_typed_errors_without_quoting() -> None:
    for bad in ("", "   \n", bytearray(b"")):
        with pytest.raises(PhraseError, match="empty"):
            phrase_to_seed(bad)
    with pytest.raises(PhraseError, match="UTF-8"):
        phrase_to_seed(bytearray(b"abandon \xff"))
    secret_looking = "zebra " * 200
    with pytest.raises(PhraseError) as exc:
        phrase_to_seed(secret_looking)
    assert "zebra" not in str(exc.value)
    with pytest.raises(PhraseError):
        phrase_to_seed(12345)  # type: ignore[arg-type]
    with pytest.raises(PhraseError):
        phrase_to_seed(ABANDON, b"x")  # type: ignore[arg-type]
    assert issubclass(PhraseError, ProtocolError)


def test_phrase_buffer_is_left_to_the_caller_and_seed_is_fresh() -> None:
    buf = bytearray(ABANDON.encode())
    seed = phrase_to_seed(buf)
    assert buf == ABANDON.encode()  # the caller owns and wipes its buffer
    assert isinstance(seed, bytearray) and len(seed) == 64


def test_unknown_word_and_word_count_warn_too() -> None:
    with pytest.warns(PhraseWarning, match="word list"):
        derive_identity("abandon " * 11 + "notaword")
    with pytest.warns(PhraseWarning, match="12, 15"):
        derive_identity("abandon " * 5)


def test_valid_phrase_does_not_warn_and_wipe_zeroes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ident = derive_identity(ABANDON)
    assert isinstance(ident, DerivedIdentity)
    secret_hex = bytes(ident.chat_secret).hex()
    assert secret_hex not in repr(ident) and secret_hex not in str(ident)
    ident.wipe()
    assert ident.chat_secret == bytearray(32)


def test_different_passphrase_gives_a_different_identity() -> None:
    assert derive_identity(ABANDON).key_uid != derive_identity(ABANDON, "TREZOR").key_uid


def test_parse_path() -> None:
    assert parse_path(CHAT_PATH) == (43 + HARDENED, 60 + HARDENED, 1581 + HARDENED, HARDENED, 0)
    assert parse_path("m/0h/1H/2") == (HARDENED, 1 + HARDENED, 2)
    assert parse_path("m") == ()
    assert parse_path(f"m/{HARDENED - 1}'") == (2**32 - 1,)
    for bad in ["", "m/", "/0", "M/0", "m/-1", "m/1''", "m/0x1", "m/ 1", "m/1/", f"m/{HARDENED}", "m//1", "m/١"]:
        with pytest.raises(PathError):
            parse_path(bad)
    with pytest.raises(PathError):
        parse_path(None)  # type: ignore[arg-type]


def test_bip32_test_vector_1() -> None:
    # BIP32 test vector 1 (seed 000102…0f): exercises hardened and normal steps independently of Status
    m = master_key(bytes(range(16)))
    assert m.xprv() == (
        "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi"
    )
    assert bytes(derive_path(m, "m/0'").secret).hex() == (
        "edb2e14f9ee77d26dd93b4ecede8d16ed408ce149b6cd80b0715a2d911a0afea"
    )
    assert bytes(derive_path(m, "m/0'/1").secret).hex() == (
        "3c6cb8d0f6a264c91ea8b5030fadaa8e538b020f0a387421a12de9319dc93368"
    )


def test_bip32_bad_inputs_and_wiping() -> None:
    for seed in (b"", bytes(15), bytes(65)):
        with pytest.raises(MalformedKey):
            master_key(seed)
    m = master_key(bytes(range(16)))
    before = (bytes(m.secret), bytes(m.chain_code))
    child = derive_path(m, "m/1'/2")
    for key in (m, child):
        assert bytes(key.secret).hex() not in repr(key) and bytes(key.chain_code).hex() not in repr(key)
        assert str(list(key.secret)) not in repr(key) and "bytearray" not in repr(key)
    assert (bytes(m.secret), bytes(m.chain_code)) == before  # master left untouched
    assert child.depth == 2
    with pytest.raises(ValueError):
        child.xprv()  # only the master key is serialised
    for bad in (-1, 2**32):
        with pytest.raises(PathError):
            derive_child(m, bad)
    child.wipe()
    assert child.secret == bytearray(32) and child.chain_code == bytearray(32)


class _FixedHmac:
    """Stands in for hmac.new so the ~2^-127 invalid-key branches can be reached."""

    def __init__(self, il: int) -> None:
        self.il = il

    def __call__(self, key: object, msg: object, digestmod: object) -> "_FixedHmac":
        return self

    def digest(self) -> bytes:
        return self.il.to_bytes(32, "big") + bytes(32)


def test_invalid_master_and_child_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.core.secp256k1 import CURVE_ORDER

    parent = master_key(bytes(range(16)))
    k = int.from_bytes(parent.secret, "big")
    for il in (0, CURVE_ORDER):
        monkeypatch.setattr("agent.core.identity.bip32.hmac.new", _FixedHmac(il))
        with pytest.raises(MalformedKey, match="master"):
            master_key(bytes(range(16)))
    for il in (CURVE_ORDER, CURVE_ORDER + 5, CURVE_ORDER - k):  # IL ≥ n, or IL + k ≡ 0 (mod n)
        monkeypatch.setattr("agent.core.identity.bip32.hmac.new", _FixedHmac(il))
        with pytest.raises(MalformedKey, match="child"):
            derive_child(parent, 0)
        with pytest.raises(MalformedKey, match="child"):
            derive_path(parent, "m/7'/1")
    assert int.from_bytes(parent.secret, "big") == k  # failures leave the parent as it was
