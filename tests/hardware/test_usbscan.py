"""USB discovery: fake pyusb devices for the shapes real readers have, plus the real pyusb/libusb on this machine."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import usb.backend.libusb0
import usb.backend.libusb1
import usb.backend.openusb
import usb.core
import usb.util

from agent.hardware import usbscan


class FakeIntf:
    def __init__(self, cls: int, sub: int = 0, proto: int = 0) -> None:
        self.bInterfaceClass, self.bInterfaceSubClass, self.bInterfaceProtocol = cls, sub, proto


class FakeDev:
    """The attributes pyusb's Device exposes that the scanner reads (iteration yields configurations)."""

    def __init__(self, vendor: int, product: int, interfaces: list[tuple[int, int, int]], *, bus: int = 1,
                 address: int = 2, strings: dict[int, str] | None = None) -> None:
        self.idVendor, self.idProduct, self.bus, self.address = vendor, product, bus, address
        self.iManufacturer, self.iProduct, self.iSerialNumber = 1, 2, 3
        self.strings = strings
        self._cfgs = [[FakeIntf(*i) for i in interfaces]]

    def __iter__(self) -> Iterator[list[FakeIntf]]:
        return iter(self._cfgs)


@pytest.fixture
def strings(monkeypatch: pytest.MonkeyPatch) -> None:
    """usb.util.get_string answers from FakeDev.strings, or fails like libusb does without permission."""

    def get_string(dev: Any, index: int, langid: Any = None) -> str:
        if dev.strings is None:
            raise usb.core.USBError("Access denied (insufficient permissions)", errno=errno.EACCES)
        return str(dev.strings[index])

    monkeypatch.setattr(usb.util, "get_string", get_string)


NK_HSM = FakeDev(0x20A0, 0x4230, [(0x0B, 0, 0)], bus=1, address=2,
                 strings={1: "Nitrokey", 2: "Nitrokey HSM", 3: "DENK01234567"})
READER = FakeDev(0x072F, 0x90CC, [(0x0B, 0, 0)], bus=2, address=5, strings=None)
MOUSE = FakeDev(0x046D, 0xC52B, [(0x03, 1, 2)], bus=1, address=3, strings={1: "Logitech", 2: "Mouse", 3: "x"})


def test_finds_tokens_and_readers_not_mice(tmp_path: Path, strings: None) -> None:
    (tmp_path / "001").mkdir()
    (tmp_path / "001" / "002").write_bytes(b"")
    scan = usbscan.scan_usb(find=lambda: [NK_HSM, READER, MOUSE], dev_root=str(tmp_path),
                            udev_data_dir=str(tmp_path / "udev"), rules_installed=False)
    assert scan.error is None and scan.seen == 3
    assert [d.ids for d in scan.devices] == ["20a0:4230", "072f:90cc"]
    hsm, reader = scan.devices
    assert (hsm.manufacturer, hsm.product, hsm.serial) == ("Nitrokey", "Nitrokey HSM", "DENK01234567")
    assert hsm.rule == "nitrokey-hsm" and hsm.is_ccid and hsm.accessible is True
    assert hsm.node == str(tmp_path / "001" / "002") and hsm.udev_tag is None
    assert reader.rule == "ccid" and reader.serial is None and reader.accessible is None
    assert any("permission denied" in n for n in reader.notes)
    assert any("no device node" in n for n in reader.notes)
    assert usbscan.scan_usb(find=lambda: [MOUSE], include_all=True, rules_installed=False).devices[0].rule is None


def test_udev_database_tag_is_read(tmp_path: Path, strings: None) -> None:
    data = tmp_path / "udev"
    data.mkdir()
    # bus 1, address 2 -> minor (1-1)*128 + (2-1) = 1
    (data / "c189:1").write_text("I:123\nE:ID_VENDOR_ID=20a0\nE:KEYAGENT_DEVICE=nitrokey-hsm\nG:uaccess\n")
    (data / "c189:132").write_text("E:ID_VENDOR_ID=072f\n")  # bus 2 address 5, not tagged by us
    scan = usbscan.scan_usb(find=lambda: [NK_HSM, READER], udev_data_dir=str(data), rules_installed=True)
    assert [d.udev_tag for d in scan.devices] == ["nitrokey-hsm", None]
    assert scan.rules_installed is True


def test_inaccessible_node_says_how_to_fix(tmp_path: Path, strings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "001").mkdir()
    (tmp_path / "001" / "002").write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may open anything; simulate a user
    (dev,) = usbscan.scan_usb(find=lambda: [NK_HSM], dev_root=str(tmp_path), rules_installed=False).devices
    assert dev.accessible is False
    assert any("keyagent install-udev" in n for n in dev.notes)


def test_no_backend_error_gives_clear_message() -> None:
    def find() -> list[Any]:
        raise usb.core.NoBackendError("No backend available")

    scan = usbscan.scan_usb(find=find, rules_installed=False)
    assert scan.devices == [] and scan.seen == 0
    assert scan.error is not None and "libusb" in scan.error and "libusb-1.0-0" in scan.error


def test_real_pyusb_without_any_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe's way to simulate a machine without libusb: every backend's get_backend returns None, and pyusb
    # itself raises NoBackendError from usb.core.find.
    for mod in (usb.backend.libusb1, usb.backend.libusb0, usb.backend.openusb):
        monkeypatch.setattr(mod, "get_backend", lambda *a, **k: None)
    scan = usbscan.scan_usb(rules_installed=False)
    assert scan.error is not None and scan.error.startswith("no USB backend")


def test_other_enumeration_errors_are_reported() -> None:
    def denied() -> list[Any]:
        raise usb.core.USBError("Access denied", errno=errno.EACCES)

    def broken() -> list[Any]:
        raise RuntimeError("boom")

    assert "not permitted" in (usbscan.scan_usb(find=denied, rules_installed=False).error or "")
    assert "RuntimeError: boom" in (usbscan.scan_usb(find=broken, rules_installed=False).error or "")


def test_real_bus_on_this_machine() -> None:
    # The real libusb backend: whatever is plugged in, the scan returns without raising and is consistent.
    scan = usbscan.scan_usb()
    assert scan.error is None or "USB" in scan.error
    assert scan.seen >= len(scan.devices)
    if not os.path.isdir("/dev/bus/usb"):
        assert scan.devices == []


def test_malformed_devices_are_skipped(strings: None) -> None:
    class Broken:
        idVendor = "not a number"

    class NoDescriptors(FakeDev):
        def __iter__(self) -> Iterator[list[FakeIntf]]:
            raise usb.core.USBError("descriptor read failed")

    odd = NoDescriptors(0x20A0, 0x4230, [], strings={1: "a", 2: "b", 3: "c"})
    scan = usbscan.scan_usb(find=lambda: [Broken(), odd], rules_installed=False)
    assert [(d.ids, d.interfaces, d.rule) for d in scan.devices] == [("20a0:4230", (), "nitrokey-hsm")]


def test_json_shape(strings: None) -> None:
    doc = usbscan.scan_usb(find=lambda: [NK_HSM], rules_installed=False).to_json()
    (dev,) = doc["devices"]
    assert dev["ids"] == "20a0:4230" and dev["interfaces"] == ["0b0000"] and dev["is_ccid"] is True
    assert doc["error"] is None and doc["seen"] == 1
