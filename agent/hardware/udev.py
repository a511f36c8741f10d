"""keyagent's udev rules: find, parse, check, render with a chosen group, install, and match against a device.

The parser understands the subset of udev(7) syntax our rules file uses (and rejects everything else), so the
test suite can prove every line is well formed and every vendor/product id is cited, and ``keyagent devices``
can say which of our rules a USB device falls under without asking udev.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = [
    "RULES_FILENAME",
    "DEFAULT_GROUP",
    "SYSTEM_RULES_DIR",
    "UdevSyntaxError",
    "UdevInstallError",
    "Assignment",
    "Rule",
    "bundled_rules_path",
    "bundled_rules_text",
    "parse_rules",
    "render_rules",
    "validate_group",
    "install_rules",
    "installed_rules_paths",
    "match_device",
]

RULES_FILENAME = "70-keyagent.rules"
DEFAULT_GROUP = "plugdev"
SYSTEM_RULES_DIR = "/etc/udev/rules.d"
#: Where an installed copy can live (admin dir first, then package dirs), udev's own search order.
RULES_SEARCH_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")

# Keys that only match (==, !=) and keys that only assign (=, +=, -=, :=). ATTR/ENV/TAG/etc. do both.
_MATCH_ONLY = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS", "TAGS", "TEST",
               "PROGRAM", "RESULT", "SUBSYSTEM", "DRIVER"}
_ASSIGN_ONLY = {"GROUP", "OWNER", "MODE", "GOTO", "LABEL", "RUN", "IMPORT", "SYMLINK", "NAME", "OPTIONS",
                "SECLABEL", "WAIT_FOR"}
_BOTH = {"ATTR", "ENV", "TAG", "SYSCTL", "CONST"}
_KNOWN = _MATCH_ONLY | _ASSIGN_ONLY | _BOTH
_WITH_ATTR = {"ATTR", "ATTRS", "ENV", "SYSCTL", "CONST", "TEST", "IMPORT", "RUN", "SECLABEL"}
_NEEDS_ATTR = {"ATTR", "ATTRS", "ENV", "SYSCTL", "CONST", "SECLABEL"}
_MATCH_OPS = ("==", "!=")
_ASSIGN_OPS = ("=", "+=", "-=", ":=")

# One KEY{attr}OP"value" token; the value is a double-quoted string without embedded quotes or backslashes,
# which is all our file needs and keeps the grammar unambiguous.
_TOKEN = re.compile(
    r'(?P<key>[A-Z_]+)(?:\{(?P<attr>[A-Za-z0-9_./:-]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"\\]*)"'
)
_SEP = re.compile(r"\s*,\s*")
_HEX4 = re.compile(r"[0-9a-f]{4}")
_GROUP = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class UdevSyntaxError(ValueError):
    """A rules line is not valid udev syntax (or uses a construct outside our subset); names the line."""

    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(f"line {lineno}: {message}")
        self.lineno = lineno


class UdevInstallError(RuntimeError):
    """The rules could not be installed (most often: not root)."""


@dataclass(frozen=True)
class Assignment:
    """One ``KEY{attr}OP"value"`` element of a rule line (match or assignment, by ``op``)."""

    key: str
    attr: str | None
    op: str
    value: str

    @property
    def is_match(self) -> bool:
        return self.op in _MATCH_OPS


@dataclass(frozen=True)
class Rule:
    """One non-comment line, its 1-based line number and the comment block right above it."""

    lineno: int
    items: tuple[Assignment, ...]
    comment: tuple[str, ...] = field(default=())

    def get(self, key: str, attr: str | None = None, *, match: bool | None = None) -> Assignment | None:
        """The first element with this key (and attr); ``match`` selects match vs assignment elements."""
        for item in self.items:
            if item.key == key and item.attr == attr and (match is None or item.is_match == match):
                return item
        return None

    @property
    def device_tag(self) -> str | None:
        """The KEYAGENT_DEVICE value this rule sets, i.e. the device family it is for."""
        item = self.get("ENV", "KEYAGENT_DEVICE", match=False)
        return item.value if item else None


def bundled_rules_path() -> Path:
    """The rules file shipped in the source tree (``udev/`` next to the ``agent`` package)."""
    here = Path(__file__).resolve()
    candidate = here.parents[2] / "udev" / RULES_FILENAME
    if not candidate.is_file():
        raise UdevInstallError(f"bundled rules file not found at {candidate} (is this a source checkout?)")
    return candidate


def bundled_rules_text() -> str:
    """The shipped rules, unmodified."""
    return bundled_rules_path().read_text(encoding="utf-8")


def _parse_line(lineno: int, line: str) -> tuple[Assignment, ...]:
    items: list[Assignment] = []
    pos = 0
    text = line.strip()
    while True:
        m = _TOKEN.match(text, pos)
        if not m:
            raise UdevSyntaxError(lineno, f"expected KEY==\"value\" / KEY=\"value\" at column {pos + 1}: {text[pos:pos + 30]!r}")
        key, attr, op, value = m.group("key"), m.group("attr"), m.group("op"), m.group("value")
        if key not in _KNOWN:
            raise UdevSyntaxError(lineno, f"unknown key {key}")
        if attr is not None and key not in _WITH_ATTR:
            raise UdevSyntaxError(lineno, f"{key} takes no {{attribute}}")
        if attr is None and key in _NEEDS_ATTR:
            raise UdevSyntaxError(lineno, f"{key} needs an {{attribute}}")
        if op in _MATCH_OPS and key in _ASSIGN_ONLY:
            raise UdevSyntaxError(lineno, f"{key} cannot be matched with {op}")
        if op in _ASSIGN_OPS and key in _MATCH_ONLY:
            raise UdevSyntaxError(lineno, f"{key} cannot be assigned with {op}")
        if key in ("GOTO", "LABEL") and op != "=":
            raise UdevSyntaxError(lineno, f"{key} only takes '='")
        items.append(Assignment(key, attr, op, value))
        pos = m.end()
        if pos == len(text):
            break
        sep = _SEP.match(text, pos)
        if not sep or sep.group(0).strip() != ",":
            raise UdevSyntaxError(lineno, f"expected ',' between elements at column {pos + 1}")
        pos = sep.end()
        if pos == len(text):
            raise UdevSyntaxError(lineno, "trailing ','")
    return tuple(items)


def parse_rules(text: str) -> list[Rule]:
    """Parse a rules file; raise UdevSyntaxError on the first bad line. Checks GOTO targets exist."""
    rules: list[Rule] = []
    comment: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            comment = []
            continue
        if line.startswith("#"):
            comment.append(line[1:].strip())
            continue
        if raw.rstrip().endswith("\\"):
            raise UdevSyntaxError(lineno, "line continuations are not used in keyagent rules")
        rules.append(Rule(lineno, _parse_line(lineno, line), tuple(comment)))
        comment = []
    labels = {item.value for r in rules for item in r.items if item.key == "LABEL"}
    for rule in rules:
        goto = rule.get("GOTO")
        if goto is not None and goto.value not in labels:
            raise UdevSyntaxError(rule.lineno, f"GOTO target {goto.value!r} has no LABEL")
        for item in rule.items:
            if item.key == "MODE" and not re.fullmatch(r"0[0-7]{3}", item.value):
                raise UdevSyntaxError(rule.lineno, f"MODE must be 4 octal digits, got {item.value!r}")
            if item.key == "ATTR" and item.attr in ("idVendor", "idProduct") and not _HEX4.fullmatch(item.value):
                raise UdevSyntaxError(rule.lineno, f"{item.attr} must be 4 lowercase hex digits, got {item.value!r}")
    return rules


def validate_group(group: str) -> str:
    """A POSIX-ish group name safe to put between quotes in a rules file; ValueError otherwise."""
    if not _GROUP.fullmatch(group):
        raise ValueError(f"invalid group name {group!r} (lowercase letters, digits, '_' and '-', max 32)")
    return group


def render_rules(group: str = DEFAULT_GROUP, text: str | None = None) -> str:
    """The rules with every GROUP="..." set to ``group`` (the comment text is left as it is)."""
    validate_group(group)
    source = bundled_rules_text() if text is None else text
    out = []
    for line in source.splitlines(keepends=True):
        if not line.lstrip().startswith("#"):
            line = re.sub(r'GROUP="[^"]*"', f'GROUP="{group}"', line)
        out.append(line)
    rendered = "".join(out)
    parse_rules(rendered)  # never hand out something udev would reject
    return rendered


def install_rules(group: str = DEFAULT_GROUP, dest_dir: str = SYSTEM_RULES_DIR) -> Path:
    """Write the rendered rules to ``dest_dir`` (mode 0644, atomically). Root is required for the system dir."""
    text = render_rules(group)
    if dest_dir == SYSTEM_RULES_DIR and os.geteuid() != 0:
        raise UdevInstallError(
            f"installing into {SYSTEM_RULES_DIR} needs root: run `sudo keyagent install-udev` "
            "(or `keyagent install-udev --print | sudo tee ...`)"
        )
    dest = Path(dest_dir) / RULES_FILENAME
    tmp = dest.with_name(f".{RULES_FILENAME}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except PermissionError as exc:
        raise UdevInstallError(f"cannot write {dest}: {exc.strerror} (root required)") from None
    except FileNotFoundError:
        raise UdevInstallError(f"directory {dest_dir} does not exist") from None
    finally:
        if tmp.exists():  # only left behind when the rename failed: never leave a half-written file around
            tmp.unlink()
    return dest


def installed_rules_paths(dirs: tuple[str, ...] = RULES_SEARCH_DIRS) -> list[Path]:
    """Every installed copy of our rules file, in udev's precedence order."""
    return [Path(d) / RULES_FILENAME for d in dirs if (Path(d) / RULES_FILENAME).is_file()]


def _matches(rule: Rule, env: dict[str, str], attrs: dict[str, str]) -> bool:
    for item in rule.items:
        if not item.is_match:
            continue
        if item.key == "ENV":
            actual = env.get(item.attr or "", "")
        elif item.key in ("ATTR", "ATTRS"):
            actual = attrs.get(item.attr or "", "")
        elif item.key == "SUBSYSTEM":
            actual = env.get("SUBSYSTEM", "")
        elif item.key == "ACTION":
            actual = env.get("ACTION", "")
        else:
            return False  # a key we cannot evaluate offline: be conservative
        hit = fnmatchcase(actual, item.value)
        if hit != (item.op == "=="):
            return False
    return True


def match_device(rules: list[Rule], vendor: int, product: int, interface_classes: list[tuple[int, int, int]]) -> Rule | None:
    """The last of our rules that would apply to this USB device (the most specific one, by file order).

    Simulates udev on an "add" of a usb_device: GOTO rules skip to their label; ENV{ID_USB_INTERFACES} is
    built the way udev's usb_id builtin does (":CCSSPP:" per distinct interface).
    """
    seen: list[str] = []
    for cls, sub, proto in interface_classes:
        entry = f"{cls:02x}{sub:02x}{proto:02x}"
        if entry not in seen:
            seen.append(entry)
    env = {"ACTION": "add", "SUBSYSTEM": "usb", "DEVTYPE": "usb_device",
           "ID_USB_INTERFACES": ":" + ":".join(seen) + ":" if seen else ""}
    attrs = {"idVendor": f"{vendor:04x}", "idProduct": f"{product:04x}"}
    best: Rule | None = None
    skip_to: str | None = None
    for rule in rules:
        label = rule.get("LABEL")
        if skip_to is not None:
            if label is not None and label.value == skip_to:
                skip_to = None
            continue
        if not _matches(rule, env, attrs):
            continue
        goto = rule.get("GOTO")
        if goto is not None:
            skip_to = goto.value
            continue
        if rule.device_tag is not None:
            best = rule
    return best
