"""Small helpers for recognisers: hex parsing and a collector of field-level differences."""

from __future__ import annotations

from typing import Any

__all__ = ["Diff", "hx", "has"]


def hx(value: Any) -> bytes:
    """Bytes from a recorded lowercase-hex string (``None``/missing counts as empty)."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise ValueError(f"expected a hex string, got {type(value).__name__}")
    return bytes.fromhex(value)


def has(node: Any, *keys: str) -> bool:
    """True when ``node`` is a dict holding every key."""
    return isinstance(node, dict) and all(k in node for k in keys)


def _short(v: Any) -> str:
    s = v.hex() if isinstance(v, (bytes, bytearray)) else repr(v)
    return s if len(s) <= 80 else s[:38] + "…" + s[-38:]


class Diff:
    """Collects ``field: expected X, got Y`` lines."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    def eq(self, where: str, expected: Any, got: Any) -> bool:
        """Compare; bytes against a hex string is compared as bytes."""
        if isinstance(got, (bytes, bytearray)) and isinstance(expected, str):
            try:
                expected = bytes.fromhex(expected)
            except ValueError:
                self.fail(where, f"recorded value is not hex: {_short(expected)}")
                return False
        if expected != got:
            self.fail(where, f"expected {_short(expected)}, got {_short(got)}")
            return False
        return True

    def opt(self, node: dict[str, Any], key: str, got: Any, where: str = "") -> None:
        """Compare ``node[key]`` with ``got`` when the recorded value exists."""
        if key in node:
            self.eq(f"{where}{key}", node[key], got)
