"""The ``keyagent`` command line.

Each ``agent/cli/cmd_*.py`` module adds its sub-commands through ``register(subparsers)``; every
sub-command sets ``func(args) -> int``. Errors become one clear line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every ``cmd_*`` module's sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS, help="agent home (default: $KEYAGENT_HOME or XDG data dir)")
    parser = argparse.ArgumentParser(
        prog="keyagent",
        description="Keep a Status identity in a PKCS#11 token (or a software key file) and share it with local apps.",
        epilog="Start with `keyagent init`, then `eval $(keyagent start)`. See README.md.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    package = importlib.import_module(__name__)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keyagent`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "home"):
        from agent.paths import default_home

        args.home = default_home()
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        print("keyagent: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, typed name first; tracebacks only with KEYAGENT_DEBUG
        if os.environ.get("KEYAGENT_DEBUG"):
            raise
        print(f"keyagent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
