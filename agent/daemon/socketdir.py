"""How the agent's socket is claimed without ever stealing a live one.

Location: :mod:`agent.paths` (shared with the client). The directory must be a real directory owned by us with mode 0700 (gnupg's check:
nobody else may create, rename or delete files in it); otherwise we refuse to start.

Claiming (OpenSSH ``socket_is_stale`` / gnupg): an existing path is probed with ``connect()``; if something
answers we refuse (:class:`AgentRunning`), if nothing does the stale file is removed and we bind. A lock file held
with ``flock`` for the daemon's lifetime (:mod:`agent.daemon.filelock`) closes the race of two agents starting
at once.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from agent.core.error_codes import CodedError, ErrorCode
from agent.daemon.filelock import FileLock, LockHeld
from agent.paths import socket_answers

__all__ = [
    "SocketDirError",
    "AgentRunning",
    "ensure_private_dir",
    "claim_socket",
    "ClaimedSocket",
]


class SocketDirError(CodedError, RuntimeError):
    """The socket directory is not ours or not private: fix its owner/mode (we never loosen or chown it)."""

    code = ErrorCode.UNSAFE_SOCKET_DIR  # start-up only (printed by keyagent start)


class AgentRunning(CodedError, RuntimeError):
    """A live agent already answers on this socket: use it (or stop it) instead of starting another."""

    code = ErrorCode.AGENT_RUNNING  # start-up only


def ensure_private_dir(path: Path, *, shared: bool = False) -> None:
    """Create ``path`` with mode 0700, or check that the existing one is a directory we own with mode 0700.

    ``shared`` (custody setups with ``--allow-uid/--allow-gid``): others may traverse the directory (0711/0755)
    so the admitted users can connect, but still nobody else may write to it (no group/other write bit).
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError as exc:
        raise SocketDirError(f"parent of socket directory {path} does not exist") from exc
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SocketDirError(f"cannot stat socket directory {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SocketDirError(f"socket directory {path} is not a directory (symlink?)")
    if st.st_uid != os.getuid():
        raise SocketDirError(f"socket directory {path} is owned by uid {st.st_uid}, not by us ({os.getuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if shared and not mode & 0o022:
        return
    if mode & 0o077:
        if shared:
            raise SocketDirError(f"socket directory {path} has mode {mode:04o}; others must not write to it")
        raise SocketDirError(
            f"socket directory {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700 (chmod 700 it)"
        )


class ClaimedSocket:
    """A bound, listening socket at ``path`` plus the lock file proving it is ours."""

    def __init__(self, path: Path, sock: socket.socket, lock: FileLock) -> None:
        self.path = path
        self.sock = sock
        self._lock = lock
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)

    def still_ours(self) -> bool:
        """False once our socket file was deleted or replaced (then the agent must exit: nobody can reach it)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.identity

    def release(self) -> None:
        """Close the listener, remove the socket file if it is still ours, drop the lock."""
        ours = self.still_ours()
        try:
            self.sock.close()
        finally:
            if ours:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            self._lock.release()


def claim_socket(path: Path, backlog: int = 128, *, shared: bool = False) -> ClaimedSocket:
    """Bind a fresh socket at ``path`` (umask 0177 → mode 0600) unless a live agent answers there.

    ``shared``: the socket is made 0666 after binding so admitted other users can connect; SO_PEERCRED, not
    the file mode, then decides who is served (p11-kit server's model).
    """
    ensure_private_dir(path.parent, shared=shared)
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock = FileLock.acquire(lock_path)
    except LockHeld as exc:
        raise AgentRunning(f"another agent holds {lock_path}") from exc
    try:
        if os.path.lexists(path):
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise SocketDirError(f"{path} exists and is not a socket; remove it by hand")
            if socket_answers(path):
                raise AgentRunning(f"an agent is already listening on {path}")
            os.unlink(path)  # stale: nothing answers and we hold the lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        if shared:
            os.chmod(path, 0o666)
        sock.listen(backlog)
        sock.setblocking(False)
        return ClaimedSocket(path, sock, lock)
    except BaseException:
        lock.release()
        raise
