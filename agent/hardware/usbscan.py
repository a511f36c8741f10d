"""USB discovery of smart-card readers and tokens with pyusb, for ``keyagent devices`` and ``doctor``.

For each device that has a CCID interface (class 0x0b) or is listed in our udev rules it reports vendor and
product ids, the strings (manufacturer, product, serial) when they can be read, whether the current user may
open its device node, which of our rules applies (offline match) and whether udev really applied it (the
``KEYAGENT_DEVICE`` property in the udev database). Missing libusb, missing ``/dev/bus/usb`` (containers) or
unreadable strings are reported, never raised.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from agent.hardware import udev

__all__ = ["UsbDevice", "UsbScan", "scan_usb", "LIBUSB_HINT", "CCID_CLASS"]

CCID_CLASS = 0x0B
USB_MAJOR = 189  # Linux char major of /dev/bus/usb/BBB/DDD nodes (usb_device)
LIBUSB_HINT = "install libusb 1.0 (Debian/Ubuntu: apt-get install libusb-1.0-0; Fedora: dnf install libusb1)"
UDEV_DATA_DIR = "/run/udev/data"


@dataclass(frozen=True)
class UsbDevice:
    """One reader or token on the USB bus."""

    bus: int
    address: int
    vendor_id: int
    product_id: int
    manufacturer: str | None
    product: str | None
    serial: str | None
    interfaces: tuple[tuple[int, int, int], ...]  # (class, subclass, protocol) of every interface
    node: str  # /dev/bus/usb/BBB/DDD
    accessible: bool | None  # current user may open the node read-write; None when the node does not exist
    rule: str | None  # KEYAGENT_DEVICE of the rule in our rules file that applies (offline match)
    udev_tag: str | None  # KEYAGENT_DEVICE udev recorded for it: our installed rule really matched
    notes: tuple[str, ...] = field(default=())

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    @property
    def is_ccid(self) -> bool:
        return any(c == CCID_CLASS for c, _, _ in self.interfaces)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ids"] = self.ids
        doc["is_ccid"] = self.is_ccid
        doc["interfaces"] = [f"{c:02x}{s:02x}{p:02x}" for c, s, p in self.interfaces]
        doc["notes"] = list(self.notes)
        return doc


@dataclass(frozen=True)
class UsbScan:
    """The result of one scan: the relevant devices, how many USB devices were seen, and why none, if so."""

    devices: list[UsbDevice]
    seen: int
    error: str | None = None  # set when USB could not be enumerated at all (no libusb, no permission, ...)
    rules_installed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"devices": [d.to_json() for d in self.devices], "seen": self.seen, "error": self.error,
                "rules_installed": self.rules_installed}


def _default_find() -> Iterable[Any]:
    import usb.core  # pyusb; imported lazily so a missing package is a message, not an ImportError at start

    return list(usb.core.find(find_all=True))


def _interfaces(dev: Any) -> tuple[tuple[int, int, int], ...]:
    out: list[tuple[int, int, int]] = []
    try:
        for cfg in dev:  # cached descriptors: reading them does not open the device
            for intf in cfg:
                entry = (int(intf.bInterfaceClass), int(intf.bInterfaceSubClass), int(intf.bInterfaceProtocol))
                if entry not in out:
                    out.append(entry)
    except Exception:  # noqa: BLE001 - a half-readable descriptor must not hide the device
        pass
    return tuple(out)


def _string(dev: Any, index_attr: str, notes: list[str]) -> str | None:
    """A string descriptor; reading one opens the device, which needs permission on its node."""
    try:
        index = int(getattr(dev, index_attr))
    except (AttributeError, TypeError, ValueError):
        return None
    if index == 0:
        return None
    try:
        import usb.util

        value = usb.util.get_string(dev, index)
    except Exception as exc:  # noqa: BLE001 - pyusb raises USBError, ValueError, NotImplementedError...
        code = getattr(exc, "errno", None)
        reason = "permission denied" if code in (errno.EACCES, errno.EPERM) else (str(exc) or type(exc).__name__)
        note = f"strings unreadable: {reason}"
        if note not in notes:
            notes.append(note)
        return None
    return str(value) if value is not None else None


def _udev_tag(bus: int, address: int, data_dir: str) -> str | None:
    minor = (bus - 1) * 128 + (address - 1)
    try:
        text = Path(data_dir, f"c{USB_MAJOR}:{minor}").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("E:KEYAGENT_DEVICE="):
            return line.split("=", 1)[1].strip() or None
    return None


def scan_usb(
    *,
    find: Callable[[], Iterable[Any]] | None = None,
    rules_text: str | None = None,
    dev_root: str = "/dev/bus/usb",
    udev_data_dir: str = UDEV_DATA_DIR,
    rules_installed: bool | None = None,
    include_all: bool = False,
) -> UsbScan:
    """Enumerate USB devices; keep CCID devices and those our rules name (all of them with ``include_all``)."""
    try:
        rules = udev.parse_rules(rules_text if rules_text is not None else udev.bundled_rules_text())
    except (udev.UdevSyntaxError, udev.UdevInstallError):
        rules = []
    installed = bool(udev.installed_rules_paths()) if rules_installed is None else rules_installed
    try:
        found = list((find or _default_find)())
    except ImportError:
        return UsbScan([], 0, "pyusb is not installed (pip install 'pyusb>=1.3,<2')", installed)
    except Exception as exc:  # noqa: BLE001 - classify pyusb's errors without importing it eagerly
        name = type(exc).__name__
        if name == "NoBackendError":
            return UsbScan([], 0, f"no USB backend: libusb is missing; {LIBUSB_HINT}", installed)
        if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
            return UsbScan([], 0, f"USB enumeration not permitted: {exc}", installed)
        return UsbScan([], 0, f"USB enumeration failed: {name}: {exc}", installed)
    devices: list[UsbDevice] = []
    for dev in found:
        try:
            vendor, product = int(dev.idVendor), int(dev.idProduct)
            bus, address = int(dev.bus or 0), int(dev.address or 0)
        except (AttributeError, TypeError, ValueError):
            continue
        interfaces = _interfaces(dev)
        rule = udev.match_device(rules, vendor, product, list(interfaces)) if rules else None
        if not include_all and rule is None and not any(c == CCID_CLASS for c, _, _ in interfaces):
            continue
        notes: list[str] = []
        node = os.path.join(dev_root, f"{bus:03d}", f"{address:03d}")
        if os.path.exists(node):
            accessible: bool | None = os.access(node, os.R_OK | os.W_OK)
            if not accessible:
                notes.append(f"{node} is not read-write for uid {os.getuid()}: install the udev rules "
                             "(keyagent install-udev) or join the rules' group")
        else:
            accessible = None
            notes.append(f"no device node {node} (container without /dev/bus/usb?)")
        manufacturer = _string(dev, "iManufacturer", notes)
        product_name = _string(dev, "iProduct", notes)
        serial = _string(dev, "iSerialNumber", notes)
        devices.append(UsbDevice(
            bus=bus, address=address, vendor_id=vendor, product_id=product, manufacturer=manufacturer,
            product=product_name, serial=serial, interfaces=interfaces, node=node, accessible=accessible,
            rule=rule.device_tag if rule else None, udev_tag=_udev_tag(bus, address, udev_data_dir),
            notes=tuple(notes)))
    return UsbScan(devices, len(found), None, installed)
