"""A throwaway PostgreSQL server for tests and benchmarks, started from the Debian binaries.

``with PgServer.start() as server: server.url`` runs ``initdb`` into a temporary directory and ``postgres`` on a
free loopback port (unix socket in that directory too), waits until it accepts connections by polling
``pg_isready``, and stops it and removes the directory on exit. As root, the binaries run as the ``postgres`` OS
user through ``runuser``, since PostgreSQL refuses to run as root. Used by ``conftest.py`` and
``bench/bench_ledger.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "apt-get install -y postgresql (Debian's binaries under /usr/lib/postgresql/<version>/bin)"


class PgUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or no way to run them."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` holding ``postgres``, else the one ``initdb`` is in on PATH."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if found:
        newest = max(
            found, key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()] or [0]
        )
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    url: str  # postgresql+asyncpg://postgres@127.0.0.1:<port>/postgres
    port: int
    root: Path
    bindir: Path
    _proc: subprocess.Popen[bytes]
    _as_user: list[str]

    @classmethod
    @contextlib.contextmanager
    def start(cls, *, timeout: float = 60.0, durable: bool = False) -> Iterator[PgServer]:
        """Start a server; ``durable=False`` turns fsync off (tests), ``True`` keeps production settings."""
        bindir = find_bindir()
        if bindir is None:
            raise PgUnavailable(f"no PostgreSQL server binaries found; {INSTALL_HINT}")
        as_user: list[str] = []
        root = Path(tempfile.mkdtemp(prefix="hivemesh-pg-"))
        try:
            if os.geteuid() == 0:
                runuser = shutil.which("runuser")
                try:
                    pw = pwd.getpwnam("postgres")
                except KeyError:
                    raise PgUnavailable(
                        "running as root but there is no 'postgres' OS user to run the server"
                    ) from None
                if runuser is None:
                    raise PgUnavailable("running as root but runuser(1) is missing")
                as_user = [runuser, "-u", "postgres", "--"]
                os.chown(root, pw.pw_uid, pw.pw_gid)
            root.chmod(0o700)
            data, log = root / "data", root / "postgres.log"
            subprocess.run(
                [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                check=True, capture_output=True, timeout=timeout,
            )  # fmt: skip
            port = _free_port()
            settings = ["-c", "max_connections=200", "-c", "shared_buffers=128MB"]
            if not durable:
                settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            with open(log, "wb") as log_file:
                proc = subprocess.Popen(
                    [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                     "-h", "127.0.0.1", "-k", str(root), *settings],
                    stdout=log_file, stderr=subprocess.STDOUT,
                )  # fmt: skip
            server = cls(
                f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", port, root, bindir, proc, as_user
            )
            try:
                server._wait_ready(timeout)
                yield server
            finally:
                server._stop()
        except subprocess.CalledProcessError as e:
            raise PgUnavailable(f"initdb failed: {e.stderr.decode(errors='replace')[-2000:]}") from e
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = [
            str(self.bindir / "pg_isready"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-q",
        ]
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PgUnavailable(f"postgres exited with {self._proc.returncode}:\n{self._log_tail()}")
            if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
                return
            time.sleep(0.05)  # a poll interval, not a wait for readiness
        raise PgUnavailable(f"postgres did not accept connections within {timeout:.0f}s:\n{self._log_tail()}")

    def _stop(self) -> None:
        if self._proc.poll() is None:
            subprocess.run(
                [*self._as_user, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", "fast", "-w"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)

    def _log_tail(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
