"""The ``keyagent`` command line.

Each ``agent/cli/cmd_*.py`` module adds its sub-commands through ``register(subparsers)``; every
sub-command sets ``func(args) -> int``. Errors become one line on stderr (``keyagent: CODE: what happened
(fix)``; also a JSON object on stdout with ``--json``) and a non-zero exit code; never a traceback unless
``KEYAGENT_DEBUG`` is set.
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
    parser.add_argument("--version", action="version", version=f"keyagent {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    package = importlib.import_module(__name__)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            module.register(sub, common)
    return parser


def _version() -> str:
    from agent import __version__

    return str(__version__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keyagent`` console script."""
    from agent.cli.common import EXIT_INPUT, describe_error, error_code, fail_coded, set_json_errors

    parser = build_parser()
    args = parser.parse_args(argv)
    set_json_errors(bool(getattr(args, "json", False)))
    if not hasattr(args, "home"):
        from agent.paths import default_home

        args.home = default_home()
    try:
        rc: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("keyagent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `keyagent ... | head`: the reader left; that is not an error worth a word
        _quiet_stdout()
        return 0
    except Exception as exc:  # the one error style; tracebacks only with KEYAGENT_DEBUG
        if os.environ.get("KEYAGENT_DEBUG"):
            raise
        code = error_code(exc)
        if isinstance(exc, PermissionError):
            fix: str | None = "check the file's owner and mode (the home and its files must be yours)"
        elif code == "INTERNAL":  # not an error we know: say so, without Python's class name
            fix = "report this as a keyagent bug (KEYAGENT_DEBUG=1 prints the details)"
        else:
            fix = None
        return fail_coded(code, describe_error(exc), EXIT_INPUT, fix)
    return rc


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
