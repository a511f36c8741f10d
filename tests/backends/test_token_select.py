"""Token selectors (RFC 7512 URIs, serial:, label:, bare labels): parsing and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.token_select import TokenSelector, parse_selector


def test_forms() -> None:
    assert parse_selector("My Token") == TokenSelector(label="My Token")
    assert parse_selector("label:pkcs11:odd") == TokenSelector(label="pkcs11:odd")
    assert parse_selector("serial:0123abcd") == TokenSelector(serial="0123abcd")
    sel = parse_selector("pkcs11:token=My%20Token;serial=42;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;"
                         "slot-id=7;object=ik;id=%01%02")
    assert sel == TokenSelector(label="My Token", serial="42", manufacturer="SoftHSM project", model="SoftHSM v2",
                                slot_id=7, object_label="ik", object_id=b"\x01\x02")
    assert parse_selector("PKCS11:token=a") == TokenSelector(label="a")
    assert parse_selector("pkcs11:") == TokenSelector()


def test_matches() -> None:
    sel = parse_selector("pkcs11:token=a;serial=1")
    kw = dict(label="a", serial="1", manufacturer="m", model="x", slot_id=3)
    assert sel.matches(**kw)  # type: ignore[arg-type]
    assert not sel.matches(**{**kw, "serial": "2"})  # type: ignore[arg-type]
    assert not parse_selector("pkcs11:slot-id=4").matches(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "", "serial:", "label:",
        "pkcs11:token=a?module-path=/tmp/evil.so",  # a module path never comes from a selector
        "pkcs11:token=a?pin-value=1234",
        "pkcs11:token",  # no '='
        "pkcs11:=a",
        "pkcs11:colour=red",
        "pkcs11:token=a;token=b",
        "pkcs11:slot-id=x",
        "pkcs11:slot-id=-1",
        "pkcs11:token=%ff%fe",  # not UTF-8
        "pkcs11:type=secret-key",
        "pkcs11:token=a/b",
        "x" * 5000,
    ],
)
def test_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(text)


def test_wrong_type_rejected() -> None:
    with pytest.raises(ValueError):
        parse_selector(b"pkcs11:token=a")  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        sel = parse_selector("pkcs11:" + text)
    except ValueError:
        return
    assert isinstance(sel, TokenSelector)
