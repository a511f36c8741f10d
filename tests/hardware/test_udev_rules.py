"""The shipped udev rules: every line parses, every id is 4 hex digits with a citation, and the matcher works."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent.hardware import udev

UDEV_DIR = Path(__file__).resolve().parents[2] / "udev"
RULE_FILES = sorted(UDEV_DIR.glob("*.rules"))


def test_there_is_a_rules_file() -> None:
    assert [p.name for p in RULE_FILES] == [udev.RULES_FILENAME]
    assert udev.bundled_rules_path() == UDEV_DIR / udev.RULES_FILENAME


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_line_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    rules = udev.parse_rules(text)
    code_lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(rules) == len(code_lines) >= 5


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_ids_are_hex4_and_cited(path: Path) -> None:
    rules = udev.parse_rules(path.read_text(encoding="utf-8"))
    id_rules = [r for r in rules if r.get("ATTR", "idVendor") or r.get("ATTR", "idProduct")]
    assert len(id_rules) >= 3
    for rule in id_rules:
        vendor, product = rule.get("ATTR", "idVendor"), rule.get("ATTR", "idProduct")
        assert vendor is not None and product is not None, f"line {rule.lineno}: vendor and product go together"
        for item in (vendor, product):
            assert item.op == "=="
            assert re.fullmatch(r"[0-9a-f]{4}", item.value), f"line {rule.lineno}: {item.value!r}"
        comment = "\n".join(rule.comment)
        assert "source:" in comment, f"line {rule.lineno}: no citation comment"
        # The citation must name this very pair, as the public list spells it (0xVVVV:0xPPPP) or as udev does.
        pair = f"0x{vendor.value}:0x{product.value}".lower()
        assert pair in comment.lower() or (
            f'idvendor}}=="{vendor.value}"' in comment.lower() and f'idproduct}}=="{product.value}"' in comment.lower()
        ), f"line {rule.lineno}: citation does not name {pair}"
        assert f"vendor {vendor.value} product {product.value}" in comment


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_access_rules_give_uaccess_group_and_mode(path: Path) -> None:
    rules = udev.parse_rules(path.read_text(encoding="utf-8"))
    access = [r for r in rules if r.device_tag is not None]
    assert {r.device_tag for r in access} >= {"ccid", "nitrokey-hsm", "smartcard-hsm"}
    for rule in access:
        tag = rule.get("TAG", match=False)
        assert tag is not None and tag.op == "+=" and tag.value == "uaccess"
        group = rule.get("GROUP")
        assert group is not None and group.op == "=" and group.value == udev.DEFAULT_GROUP
        mode = rule.get("MODE")
        assert mode is not None and mode.value == "0660"
    ccid = next(r for r in access if r.device_tag == "ccid")
    interfaces = ccid.get("ENV", "ID_USB_INTERFACES")
    assert interfaces is not None and interfaces.op == "==" and interfaces.value.startswith("*:0b")


def test_rules_are_guarded_to_usb_add() -> None:
    rules = udev.parse_rules(udev.bundled_rules_text())
    gotos = [r for r in rules if r.get("GOTO")]
    assert {(r.items[0].key, r.items[0].op, r.items[0].value) for r in gotos} >= {
        ("ACTION", "==", "remove"), ("SUBSYSTEM", "!=", "usb"), ("ENV", "!=", "usb_device")}
    assert rules[-1].get("LABEL") is not None


def test_uaccess_file_sorts_before_seat_late() -> None:
    # systemd applies TAG+="uaccess" in 73-seat-late.rules; a later file's tag would be ignored.
    assert udev.RULES_FILENAME < "73-seat-late.rules"


# --- the parser itself rejects what udev would reject -------------------------------------------------------

GOOD = 'ATTR{idVendor}=="20a0", ATTR{idProduct}=="4230", MODE="0660", GROUP="plugdev", TAG+="uaccess"'


@pytest.mark.parametrize(
    "line",
    [
        'ATTR{idVendor}=="20a0" ATTR{idProduct}=="4230"',  # missing comma
        'ATTR{idVendor}=="20a0",',  # trailing comma
        'ATTR{idVendor}==20a0',  # unquoted value
        'ATTR{idVendor}=="20a0',  # unterminated quote
        'ATTR{idVendor}==="20a0"',  # bad operator
        'ATTR{idVendor}=="20A0"',  # ids are lowercase in sysfs
        'ATTR{idVendor}=="20a"',  # 3 digits
        'ATTR{idVendor}=="020a0"',  # 5 digits
        'ATTR{idProduct}=="42g0"',  # not hex
        'FOO=="bar"',  # unknown key
        'ENV=="x"',  # ENV needs an attribute
        'GROUP=="plugdev"',  # assignment-only key matched
        'ACTION="add"',  # match-only key assigned
        'GROUP{x}="plugdev"',  # GROUP takes no attribute
        'MODE="660"',  # mode must be 4 octal digits
        'MODE="0668"',
        'GOTO="nowhere"',  # dangling GOTO
        'TAG+="uaccess" \\',  # continuation
        'tag+="uaccess"',  # lowercase key
        '"uaccess"',
    ],
)
def test_parser_rejects(line: str) -> None:
    with pytest.raises(udev.UdevSyntaxError) as err:
        udev.parse_rules("# c\n" + line + "\n")
    assert err.value.lineno == 2


def test_parser_accepts_good_line_and_reports_fields() -> None:
    (rule,) = udev.parse_rules(GOOD)
    assert [(i.key, i.attr, i.op, i.value) for i in rule.items] == [
        ("ATTR", "idVendor", "==", "20a0"), ("ATTR", "idProduct", "==", "4230"), ("MODE", None, "=", "0660"),
        ("GROUP", None, "=", "plugdev"), ("TAG", None, "+=", "uaccess")]


def test_every_truncation_of_a_rule_line_is_rejected_or_shorter() -> None:
    # Cutting a line anywhere must either fail loudly or parse to fewer complete elements: never garbage.
    full = len(udev.parse_rules(GOOD)[0].items)
    for cut in range(1, len(GOOD)):
        try:
            rules = udev.parse_rules(GOOD[:cut])
        except udev.UdevSyntaxError:
            continue
        assert len(rules[0].items) < full
        assert GOOD[:cut].rstrip().endswith('"')


def test_single_character_flips_never_yield_a_bad_id() -> None:
    # Flip each character of the vendor id to a non-hex character: the parser must refuse every one.
    start = GOOD.index("20a0")
    for offset in range(4):
        for ch in "gG-x Z\"":
            line = GOOD[: start + offset] + ch + GOOD[start + offset + 1:]
            with pytest.raises(udev.UdevSyntaxError):
                udev.parse_rules(line)


# --- render / install ---------------------------------------------------------------------------------------

def test_render_sets_group_everywhere_and_stays_valid() -> None:
    text = udev.render_rules("keyagent")
    rules = udev.parse_rules(text)
    groups = {r.get("GROUP").value for r in rules if r.get("GROUP")}  # type: ignore[union-attr]
    assert groups == {"keyagent"}
    assert 'GROUP="plugdev"' not in "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    assert udev.render_rules() == udev.bundled_rules_text()


@pytest.mark.parametrize("group", ["", "Plugdev", 'x", RUN+="/bin/sh', "a b", "9abc", "a" * 33, "a/b"])
def test_render_rejects_bad_group(group: str) -> None:
    with pytest.raises(ValueError):
        udev.render_rules(group)


def test_install_into_a_directory(tmp_path: Path) -> None:
    dest = udev.install_rules("wheel", str(tmp_path))
    assert dest == tmp_path / udev.RULES_FILENAME
    assert dest.stat().st_mode & 0o777 == 0o644
    assert 'GROUP="wheel"' in dest.read_text()
    assert udev.installed_rules_paths((str(tmp_path), str(tmp_path / "none"))) == [dest]


def test_install_into_system_dir_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(udev.UdevInstallError, match="needs root"):
        udev.install_rules()


def test_install_missing_dir_is_clear(tmp_path: Path) -> None:
    with pytest.raises(udev.UdevInstallError, match="does not exist"):
        udev.install_rules("plugdev", str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


# --- offline matching -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("vendor", "product", "interfaces", "expected"),
    [
        (0x20A0, 0x4230, [(0x0B, 0, 0)], "nitrokey-hsm"),
        (0x04E6, 0x5817, [(0x0B, 0, 0)], "smartcard-hsm"),
        (0x2E8A, 0x10FD, [(0xFF, 0, 0)], "pico-hsm"),  # by id, even without the CCID class
        (0x1050, 0x0407, [(0x03, 1, 1), (0x0B, 0, 0)], "ccid"),  # any CCID interface
        (0x072F, 0x90CC, [(0x0B, 0, 2)], "ccid"),  # ICCD protocol byte
        (0x046D, 0xC52B, [(0x03, 1, 2)], None),  # a mouse
        (0x20A0, 0x4108, [(0x03, 0, 0)], None),  # known vendor, unlisted product, no CCID
    ],
)
def test_match_device(vendor: int, product: int, interfaces: list[tuple[int, int, int]], expected: str | None) -> None:
    rule = udev.match_device(udev.parse_rules(udev.bundled_rules_text()), vendor, product, interfaces)
    assert (rule.device_tag if rule else None) == expected
