"""Whether an agent home can be trusted: checked before anything in it is read, written or obeyed.

The home decides what the agent does: ``config.json`` names the PKCS#11 module that is loaded into the agent,
``agent.json`` may name a ``confirm_command`` that runs as the owner, ``identity.key`` holds the key. Those files
are trusted only because nobody but the owner can have written them, so that is verified (OpenSSH's
``safe_path``/StrictModes rule):

* the home is a real directory owned by the user, not group/other-writable;
* every parent up to ``/`` is owned by the user or root and not group/other-writable, except a root-owned
  sticky directory such as ``/tmp`` (others may create names there but cannot rename or remove ours);
* each file the agent keeps in the home, when present, is not a symlink, is owned by the user and
  not group/other-writable; secret files (the key file) are not group/other-readable either.

Trusted files are opened with ``O_NOFOLLOW`` (:func:`open_nofollow`), so a symlink planted between the check and
the open is refused rather than followed. Failures raise :class:`UnsafeHome` naming the path and the fix; the
agent never chmods or chowns on its own.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterable

from agent.core.error_codes import CodedError, ErrorCode

__all__ = ["UnsafeHome", "HOME_FILES", "SECRET_FILES", "check_home", "check_home_file", "verify_home",
           "open_nofollow"]

#: The files the agent keeps in a home (agent/daemon/config.py's layout, backends/home.py's config and PIN count).
HOME_FILES = ("config.json", "agent.json", "audit.log", "agent.log", "state.db", "state.db-wal", "state.db-shm",
              "pin-failures.json")
#: Files whose content is secret: not even readable by others (``keyagent doctor`` FAILs the same modes).
SECRET_FILES = ("identity.key",)


class UnsafeHome(CodedError, RuntimeError):
    """The home, a parent or a file in it can be changed by another user: fix the owner/mode named in the message."""

    code = ErrorCode.UNSAFE_HOME


def _owner_fix(path: Path, uid: int) -> str:
    return f"chown {os.getuid()} {path} (as root), or use a home of your own" if uid != os.getuid() else ""


def check_home(home: str | os.PathLike[str]) -> None:
    """Refuse a home (or a parent of it) that another user owns or may write to; a missing home is checked
    from its nearest existing parent (``init`` creates it 0700)."""
    uid = os.getuid()
    path = Path(os.path.realpath(os.path.expanduser(os.fspath(home))))
    first = True
    for current in (path, *path.parents):
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if first:
                continue  # not created yet: its parents decide who could
            raise UnsafeHome(f"{current} vanished while the home {path} was checked") from None
        except OSError as exc:
            raise UnsafeHome(f"cannot check {current}: {exc.strerror}") from exc
        is_home = current == path
        what = "home" if is_home else f"parent {current} of the home"
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeHome(f"{'home ' + str(path) if is_home else what} is not a directory")
        mode = stat.S_IMODE(st.st_mode)
        if is_home and st.st_uid != uid:
            raise UnsafeHome(f"home {path} is owned by uid {st.st_uid}, not by you ({uid}): another user controls "
                             f"what the agent loads from it; fix: {_owner_fix(path, st.st_uid)}")
        if not is_home and st.st_uid not in (uid, 0):
            raise UnsafeHome(f"{what} is owned by uid {st.st_uid}: that user could replace the home; fix: move "
                             f"the home (--home / KEYAGENT_HOME) below directories only you or root own")
        if mode & 0o022 and not (not is_home and st.st_uid == 0 and mode & stat.S_ISVTX):
            target = path if is_home else current
            raise UnsafeHome(f"{'home ' + str(path) if is_home else what} has mode {mode:04o}: other users can "
                             f"write to it; fix: chmod go-w {target}")
        first = False


def check_home_file(path: str | os.PathLike[str], *, secret: bool = False) -> None:
    """Refuse a home file that is a symlink, not ours, or writable (``secret``: readable) by others; absent is fine."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeHome(f"cannot check {p}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeHome(f"{p} is a symlink; the agent does not follow links in its home: replace it with the file")
    # Not a regular file (a directory, a FIFO): only the owner can have made it in a verified home, so it is no
    # trust question; reading it fails with the OS's own error.
    if st.st_uid != os.getuid():
        raise UnsafeHome(f"{p} is owned by uid {st.st_uid}, not by you ({os.getuid()}); fix: "
                         f"{_owner_fix(p, st.st_uid)}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (0o077 if secret else 0o022):
        raise UnsafeHome(f"{p} has mode {mode:04o}: other users can {'read' if secret else 'change'} it; "
                         f"fix: chmod {'600' if secret else 'go-w'} {p}")


def verify_home(home: str | os.PathLike[str], *, secret_files: Iterable[str] = ()) -> None:
    """The home, its parents and every file the agent keeps in it (``secret_files``: more secret names, e.g. the
    configured key file, relative to the home or absolute)."""
    check_home(home)
    base = Path(os.path.expanduser(os.fspath(home)))
    for name in HOME_FILES:
        check_home_file(base / name)
    for name in (*SECRET_FILES, *secret_files):
        check_home_file(base / name, secret=True)


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """``os.open`` with ``O_NOFOLLOW | O_CLOEXEC``: a symlink at ``path`` is refused (UnsafeHome), never followed."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeHome(f"{os.fspath(path)} is a symlink; the agent does not follow links to its trusted "
                             f"files: replace it with the file") from exc
        raise
