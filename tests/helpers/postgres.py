"""A real, throw-away PostgreSQL server for tests: ``initdb`` and ``pg_ctl`` in a temporary directory, listening
on a Unix socket only, run as the ``postgres`` system user (the server refuses to run as root, and the suite
runs as root in CI).

Usage::

    with PgServer() as pg:            # initdb + start; stopped and removed on exit
        pg.url("keyagent")            # postgresql:///keyagent?host=<socket dir>&port=<port>&user=keyagent
        pg.restart(); pg.stop(); pg.start()

The server trusts local connections by default; ``PgServer(password="...")`` requires scram-sha-256 for every
connection (tests of the passfile). Nothing touches a system cluster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pytest

__all__ = ["PgServer", "pg_bin", "have_postgres"]

_PG_ROOT = Path("/usr/lib/postgresql")
_RUN_AS = "postgres"


def pg_bin(name: str) -> str:
    """The newest installed PostgreSQL's ``name`` binary (Debian keeps them out of PATH)."""
    versions = sorted((p for p in _PG_ROOT.glob("*/bin") if (p / name).exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        raise FileNotFoundError(f"no PostgreSQL {name} under {_PG_ROOT}")
    return str(versions[-1] / name)


def have_postgres() -> bool:
    try:
        pg_bin("initdb")
        pwd.getpwnam(_RUN_AS)
    except (FileNotFoundError, KeyError):
        return False
    return True


class PgServer:
    """One cluster in its own temporary directory; ``port`` only names the socket file (no TCP listener)."""

    def __init__(self, *, password: str | None = None, port: int = 5432, user: str = "keyagent") -> None:
        self.password = password
        self.port = port
        self.user = user
        self.dir = Path()
        self.data = Path()
        self.sock_dir = Path()
        self._pw = pwd.getpwnam(_RUN_AS)

    # the server binaries run as the postgres user; the suite (root) keeps ownership of nothing inside
    def _as_pg(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["setpriv", f"--reuid={self._pw.pw_uid}", f"--regid={self._pw.pw_gid}", "--clear-groups", *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(self.dir)}
        cp = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}")
        return cp

    def __enter__(self) -> "PgServer":
        self.dir = Path(tempfile.mkdtemp(prefix="kapg-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            os.chown(self.dir, self._pw.pw_uid, self._pw.pw_gid)
        self.data = self.dir / "data"
        self.sock_dir = self.dir / "sock"
        try:
            pwfile = self.dir / "initpw"
            init = [pg_bin("initdb"), "-D", str(self.data), "-U", self.user, "--no-sync", "-E", "UTF8",
                    "--auth-local", "scram-sha-256" if self.password else "trust",
                    "--auth-host", "scram-sha-256" if self.password else "trust"]
            if self.password:
                pwfile.write_text(self.password)
                if os.geteuid() == 0:
                    os.chown(pwfile, self._pw.pw_uid, self._pw.pw_gid)
                pwfile.chmod(0o600)
                init += ["--pwfile", str(pwfile)]
            self._as_pg(*init)
            pwfile.unlink(missing_ok=True)
            self._as_pg("mkdir", "-m", "0755", str(self.sock_dir))
            with open(self.data / "postgresql.conf", "a") as fh:
                fh.write(
                    f"listen_addresses = ''\nunix_socket_directories = '{self.sock_dir}'\nport = {self.port}\n"
                    "max_connections = 200\nshared_buffers = 32MB\nfsync = on\nsynchronous_commit = on\n"
                    # a killed agent's backend notices the closed socket at once; a partitioned one within
                    # these keepalives (what releases its session-level advisory locks)
                    "tcp_keepalives_idle = 5\ntcp_keepalives_interval = 2\ntcp_keepalives_count = 3\n"
                    "client_connection_check_interval = 1000\n")
            self.start()
            self._as_pg(pg_bin("createdb"), "-h", str(self.sock_dir), "-p", str(self.port), "-U", self.user,
                        "-w", "keyagent", check=not self.password)
            if self.password:  # createdb -w cannot authenticate: create it through psql with the password
                self.sql("postgres", "CREATE DATABASE keyagent")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.data.name and (self.data / "postmaster.pid").exists():
            self._as_pg(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        if self.dir.name:
            shutil.rmtree(self.dir, ignore_errors=True)

    def start(self) -> None:
        self._as_pg(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w",
                    "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session (clients see their connection drop); ``immediate`` is a crash."""
        self._as_pg(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, dbname: str = "keyagent") -> str:
        """A libpq URL for the test database over the Unix socket (no password in it: a passfile gives that)."""
        return f"postgresql:///{dbname}?host={quote(str(self.sock_dir), safe='')}&port={self.port}&user={self.user}"

    def sql(self, dbname: str, statement: str) -> str:
        """Run one statement as the cluster's superuser; returns psql's unaligned output."""
        env_pw = self.dir / "psqlpass"
        args = [pg_bin("psql"), "-h", str(self.sock_dir), "-p", str(self.port), "-U", self.user, "-d", dbname,
                "-Atc", statement]
        if self.password:
            env_pw.write_text(f"*:*:*:{self.user}:{self.password}\n")
            if os.geteuid() == 0:
                os.chown(env_pw, self._pw.pw_uid, self._pw.pw_gid)
            env_pw.chmod(0o600)
            args = ["env", f"PGPASSFILE={env_pw}", *args]
        return self._as_pg(*args).stdout.strip()

    def log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""


def require_postgres() -> None:
    """Fail (not skip: CI installs the package) with a clear message when PostgreSQL is missing."""
    if not have_postgres():
        pytest.fail("PostgreSQL is not installed (bash .ci/setup installs Debian's postgresql package)")
