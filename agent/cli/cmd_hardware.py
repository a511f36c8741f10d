"""``keyagent devices | install-udev | doctor``: what hardware is there, give users access to it, and explain.

``keyagent devices`` is a sub-command group whose default action (no sub-command) lists USB readers/tokens and
the configured module's PKCS#11 slots. Other modules add sub-commands to it (e.g. ``devices approve ID``)
through :func:`add_devices_subcommand`, whatever order the ``cmd_*`` modules load in.

Exit codes: ``devices`` 0 whenever it could report (also "no devices" and "no libusb": both are printed);
``install-udev`` 0 installed/printed, 1 not permitted (not root) or failed; ``doctor`` 0 when no check FAILed
(WARN does not fail), 1 otherwise; 2 bad options.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable

from agent.cli.common import EXIT_FAILED, EXIT_INPUT, EXIT_OK, describe_error, fail, fail_coded
from agent.hardware import doctor, udev, usbscan

__all__ = ["register", "add_devices_subcommand", "devices_subcommands"]

@dataclass(frozen=True)
class _DevicesSub:
    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]


_DEVICE_SUBS: dict[str, _DevicesSub] = {}
_current: dict[str, Any] = {}  # the group and common parser of the parser being built right now


def add_devices_subcommand(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``keyagent devices NAME``; ``setup(parser)`` adds its arguments and ``set_defaults(func=...)``.

    Safe to call before or after this module's ``register`` runs (it is applied to every parser built later,
    and to the one being built now if the group already exists and has no sub-command of that name yet).
    Calling it again with the same name replaces the entry for parsers built afterwards.
    """
    if name in ("list",) or not name or name.startswith("-"):
        raise ValueError(f"reserved or bad devices sub-command name {name!r}")
    _DEVICE_SUBS[name] = _DevicesSub(name, help, setup)
    group = _current.get("group")
    if group is not None and name not in group.choices:
        _apply(group, _current["common"], _DEVICE_SUBS[name])


def devices_subcommands() -> list[str]:
    return sorted(_DEVICE_SUBS)


def _apply(group: Any, common: argparse.ArgumentParser, sub: _DevicesSub) -> None:
    p = group.add_parser(sub.name, parents=[common], help=sub.help)
    sub.setup(p)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    dev = subparsers.add_parser("devices", parents=[common], help="list USB readers/tokens and PKCS#11 slots",
                                description="With no sub-command: list USB smart-card readers and tokens, and the "
                                            "PKCS#11 slots of the configured module.")
    _listing_args(dev)
    dev.set_defaults(func=_cmd_list_hardware)
    group = dev.add_subparsers(dest="devices_command", metavar="SUBCOMMAND")
    group.required = False
    lst = group.add_parser("list", parents=[common], help="the listing (same as plain `keyagent devices`)")
    _listing_args(lst)
    lst.set_defaults(func=_cmd_list_hardware)
    _current["group"], _current["common"] = group, common
    for sub in list(_DEVICE_SUBS.values()):
        _apply(group, common, sub)

    ins = subparsers.add_parser("install-udev", parents=[common], help="print or install the udev rules (root)",
                                description="Install udev rules giving the logged-in user (uaccess) and a group "
                                            "access to USB smart-card readers and tokens. Installing needs root.")
    ins.add_argument("--print", dest="print_only", action="store_true", help="print the rules instead of installing")
    ins.add_argument("--group", default=udev.DEFAULT_GROUP, help=f"group given access (default {udev.DEFAULT_GROUP})")
    ins.add_argument("--dest", default=udev.SYSTEM_RULES_DIR, help=f"rules directory (default {udev.SYSTEM_RULES_DIR})")
    ins.set_defaults(func=_cmd_install_udev)

    doc = subparsers.add_parser("doctor", parents=[common], help="check the setup; OK/WARN/FAIL with the fix",
                                description="Check module, token, identity key, PIN state, socket directory, "
                                            "store, udev rules and clock. Exit 1 if any check FAILs.")
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    doc.add_argument("--check", action="append", metavar="NAME", help="run only this check (repeatable)")
    doc.add_argument("--list", dest="list_checks", action="store_true", help="list the registered checks")
    doc.add_argument("--login", action="store_true",
                     help="log in once to inspect the private key (PIN from KEYAGENT_PIN, else the terminal)")
    doc.add_argument("--pin-file", metavar="FILE", help="read the PIN for --login from FILE (first line)")
    doc.add_argument("--socket", metavar="PATH", help="the agent socket to check (default: the home's)")
    doc.set_defaults(func=_cmd_doctor)


# ----- devices -----------------------------------------------------------------------------------------------------

def _listing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", dest="all_usb", action="store_true", help="list every USB device, not only readers")
    p.add_argument("--module", metavar="PATH", help="PKCS#11 module to list (default: the home's configured one)")


def _home_pkcs11(home: str) -> dict[str, Any]:
    """The home's pkcs11 config section ({} when the home has none): module path and the recorded token serial."""
    from backends.home_config import ConfigUntrusted, HomeConfigError, read_home_config

    try:
        doc = read_home_config(home)
    except ConfigUntrusted as exc:  # its module must not be loaded: say why instead of listing nothing
        raise exc.error from None
    except HomeConfigError:
        return {}
    if isinstance(doc, dict) and doc.get("backend") == "pkcs11" and isinstance(doc.get("pkcs11"), dict):
        section: dict[str, Any] = doc["pkcs11"]
        return section
    return {}


def _configured_module(home: str) -> str | None:
    module = _home_pkcs11(home).get("module")
    return module if isinstance(module, str) else None


def _pkcs11_listing(module: str | None) -> dict[str, Any]:
    if module is None:
        return {"module": None, "slots": [], "error": None}
    from backends.pkcs11 import inventory

    try:
        slots = inventory.list_slots(module)
    except Exception as exc:  # noqa: BLE001 - ModuleLoadError, TokenAbsent: report, do not crash the listing
        return {"module": module, "slots": [], "error": str(exc)}
    return {"module": module, "slots": [s.to_json() for s in slots], "error": None}


def _usb_line(d: usbscan.UsbDevice) -> list[str]:
    name = " ".join(x for x in (d.manufacturer, d.product) if x) or "(strings unreadable)"
    access = {True: "yes", False: "NO", None: "no node"}[d.accessible]
    if d.rule is None:
        rule = "no keyagent rule matches"
    elif d.udev_tag:
        rule = f"rule {d.rule} (applied by udev)"
    else:
        rule = f"rule {d.rule} (not applied: rules not installed or not triggered)"
    lines = [f"  {d.ids}  {name}  serial {d.serial or '?'}  bus {d.bus:03d} dev {d.address:03d}  "
             f"open: {access}  {rule}"]
    lines += [f"      note: {n}" for n in d.notes]
    return lines


_FLAG_TEXT = {"LOGIN_REQUIRED": "login required", "USER_PIN_COUNT_LOW": "PIN COUNT LOW",
              "USER_PIN_FINAL_TRY": "PIN FINAL TRY", "USER_PIN_LOCKED": "PIN LOCKED",
              "USER_PIN_TO_BE_CHANGED": "PIN to be changed", "WRITE_PROTECTED": "write-protected",
              "TOKEN_INITIALIZED": "initialised", "PROTECTED_AUTHENTICATION_PATH": "PIN pad"}


def _cmd_list_hardware(args: argparse.Namespace) -> int:
    scan = usbscan.scan_usb(include_all=bool(getattr(args, "all_usb", False)))
    module = getattr(args, "module", None) or _configured_module(args.home)
    p11 = _pkcs11_listing(module)
    ours = _home_pkcs11(args.home).get("token_serial")
    for slot in p11["slots"]:  # mark the token this home was initialised with
        if slot["token"] is not None:
            slot["token"]["this_home"] = bool(ours) and slot["token"]["serial"] == ours
    if getattr(args, "json", False):
        print(json.dumps({"usb": scan.to_json(), "pkcs11": p11}, indent=2, sort_keys=True))
        return EXIT_OK
    print("USB smart-card readers and tokens:")
    if scan.error:
        print(f"  USB unavailable: {scan.error}")
    elif not scan.devices:
        print(f"  none found ({scan.seen} USB device(s) visible"
              f"{'' if os.path.isdir('/dev/bus/usb') else '; no /dev/bus/usb on this machine'})")
    for d in scan.devices:
        for line in _usb_line(d):
            print(line)
    installed = udev.installed_rules_paths()
    print(f"udev rules: {'installed at ' + str(installed[0]) if installed else 'not installed (sudo keyagent install-udev)'}")
    print()
    if p11["module"] is None:
        print("PKCS#11: no module configured in this home (keyagent init --backend pkcs11, or --module PATH)")
        return EXIT_OK
    print(f"PKCS#11 slots of {p11['module']}:")
    if p11["error"]:
        print(f"  module unusable: {p11['error']}")
        return EXIT_OK
    if not p11["slots"]:
        print("  no slots (no reader attached, pcscd not running, or the p11-kit server is down)")
    for s in p11["slots"]:
        head = f"  slot {s['slot_id']:#x}  {s['description']!r}{'  removable' if s['removable'] else ''}"
        tok = s["token"]
        if tok is None:
            print(f"{head}  {'token unreadable: ' + s['token_error'] if s['token_error'] else '(no token)'}")
            continue
        if "TOKEN_INITIALIZED" not in tok["flags"]:
            print(f"{head}  uninitialised token ({tok['manufacturer']} {tok['model']})")
            continue
        flags = ", ".join(_FLAG_TEXT[f] for f in tok["flags"] if f in _FLAG_TEXT and f != "TOKEN_INITIALIZED")
        print(f"{head}\n      token {tok['label']!r}  serial {tok['serial']}  {tok['manufacturer']} {tok['model']}"
              f"{'  flags: ' + flags if flags else ''}{'  <- this home' if tok.get('this_home') else ''}")
    return EXIT_OK


# ----- install-udev ------------------------------------------------------------------------------------------------

def _cmd_install_udev(args: argparse.Namespace) -> int:
    try:
        udev.validate_group(args.group)
    except ValueError as exc:
        return fail(f"{exc}", EXIT_INPUT)
    if args.print_only:
        sys.stdout.write(udev.render_rules(args.group))
        return EXIT_OK
    try:
        dest = udev.install_rules(args.group, args.dest)
    except udev.UdevInstallError as exc:
        return fail(f"{exc}", EXIT_FAILED)
    print(f"installed {dest} (group {args.group})")
    reload_cmds = [["udevadm", "control", "--reload"], ["udevadm", "trigger", "--subsystem-match=usb",
                                                        "--action=add"]]
    if args.dest == udev.SYSTEM_RULES_DIR and shutil.which("udevadm"):
        for cmd in reload_cmds:
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"warning: {' '.join(cmd)} failed: {res.stderr.strip()}", file=sys.stderr)
        print("udev reloaded; replug the token (or log out and in) for uaccess to apply")
    else:
        print("now run: " + " && ".join("sudo " + " ".join(c) for c in reload_cmds))
    return EXIT_OK


# ----- doctor ------------------------------------------------------------------------------------------------------

def _doctor_pin(args: argparse.Namespace) -> str | None:
    if args.pin_file:
        with open(args.pin_file, encoding="utf-8") as fh:
            pin = fh.readline().rstrip("\r\n")
        if not pin:
            raise ValueError(f"{args.pin_file} holds no PIN")
        return pin
    if not args.login:
        return None
    env = os.environ.get("KEYAGENT_PIN")
    if env:
        return env
    if sys.stdin.isatty():
        return getpass.getpass("token user PIN (one try): ")
    raise ValueError("--login needs KEYAGENT_PIN, --pin-file or a terminal")


def _cmd_doctor(args: argparse.Namespace) -> int:
    if args.list_checks:
        doctor.run_checks(doctor.DoctorContext(home=args.home), only=[])  # loads extra check modules
        for name in doctor.registered_checks():
            print(name)
        return EXIT_OK
    try:
        pin = _doctor_pin(args)
    except OSError as exc:  # the PIN file: named with the OS's reason, not Python's exception text
        return fail_coded("BAD_INPUT", f"cannot read the PIN file: {describe_error(exc)}", EXIT_INPUT,
                          "check the path and that the file is yours (mode 0600)")
    except ValueError as exc:
        return fail_coded("BAD_INPUT", str(exc), EXIT_INPUT, "")
    ctx = doctor.DoctorContext(home=os.path.abspath(os.path.expanduser(args.home)), pin=pin, socket_path=args.socket)
    try:
        results = doctor.run_checks(ctx, only=args.check)
    except ValueError as exc:  # an unknown --check name: the message lists the known ones
        return fail_coded("BAD_INPUT", str(exc), EXIT_INPUT, "")
    if args.json:
        print(json.dumps({"results": [r.to_json() for r in results], "exit": doctor.exit_code(results)},
                         indent=2))
    else:
        print(doctor.format_results(results))
    return doctor.exit_code(results)
