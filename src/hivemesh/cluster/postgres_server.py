"""A private PostgreSQL server on a loopback port, started from Debian's binaries (tests, benchmarks, ``up``).

    with PgServer.start() as server:              # a throwaway cluster in a temporary directory
        server.url  # postgresql+asyncpg://postgres@127.0.0.1:<port>/postgres
    server = PgServer.launch(data_dir / "postgres", durable=True)   # kept across runs: initdb only the first time
    server.stop()

``initdb`` runs once per directory; ``postgres`` listens on 127.0.0.1 (and a unix socket in the directory), and
readiness is polled with ``pg_isready``, never slept on. As root, the binaries run as the ``postgres`` OS user
through ``runuser`` (PostgreSQL refuses to run as root), so that user must be able to reach the directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hivemesh.cluster.redis_server import free_port

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


def _as_postgres(root: Path) -> list[str]:
    """The command prefix that runs the binaries as the ``postgres`` user when we are root ([] otherwise)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise PgUnavailable("running as root but there is no 'postgres' OS user to run the server") from None
    if runuser is None:
        raise PgUnavailable("running as root but runuser(1) is missing")
    for parent in root.resolve().parents:  # every directory above must let the postgres user through
        st = parent.stat()
        if not st.st_mode & 0o001 and st.st_uid != pw.pw_uid:
            raise PgUnavailable(
                f"running as root, PostgreSQL runs as the 'postgres' user, which cannot reach {root} "
                f"({parent} is closed to other users); choose a data dir it can reach, e.g. under /var/lib or /tmp"
            )
    os.chown(root, pw.pw_uid, pw.pw_gid)
    return [runuser, "-u", "postgres", "--"]


@dataclass
class PgServer:
    url: str  # postgresql+asyncpg://postgres@127.0.0.1:<port>/postgres
    port: int
    root: Path
    bindir: Path
    _proc: subprocess.Popen[bytes]
    _as_user: list[str]
    _owned_dir: bool = field(default=False)

    @classmethod
    def launch(
        cls, root: Path | None = None, *, port: int = 0, durable: bool = False, timeout: float = 60.0
    ) -> PgServer:
        """Start a server in ``root`` (``None``: a temporary directory, removed by ``stop()``); ``durable=False``
        turns fsync off (tests), ``True`` keeps production settings."""
        bindir = find_bindir()
        if bindir is None:
            raise PgUnavailable(f"no PostgreSQL server binaries found; {INSTALL_HINT}")
        owned = root is None
        root = Path(tempfile.mkdtemp(prefix="hivemesh-pg-")) if root is None else root
        try:
            root.mkdir(parents=True, exist_ok=True)
            as_user = _as_postgres(root)
            root.chmod(0o700)
            data, log = root / "data", root / "postgres.log"
            if not (data / "PG_VERSION").exists():
                subprocess.run(
                    [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                     "--encoding=UTF8", "--locale=C", "--no-sync"],
                    check=True, capture_output=True, timeout=timeout,
                )  # fmt: skip
            port = port or free_port()
            settings = ["-c", "max_connections=200", "-c", "shared_buffers=128MB"]
            if not durable:
                settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            with open(log, "ab") as log_file:
                proc = subprocess.Popen(
                    [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                     "-h", "127.0.0.1", "-k", str(root), *settings],
                    stdout=log_file, stderr=subprocess.STDOUT,
                )  # fmt: skip
            server = cls(
                f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres",
                port,
                root,
                bindir,
                proc,
                as_user,
                owned,
            )
            try:
                server._wait_ready(timeout)
            except BaseException:
                server.stop()
                raise
            return server
        except subprocess.CalledProcessError as e:
            if owned:
                shutil.rmtree(root, ignore_errors=True)
            raise PgUnavailable(f"initdb failed: {e.stderr.decode(errors='replace')[-2000:]}") from e
        except BaseException:
            if owned:
                shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, root: Path | None = None, *, port: int = 0, durable: bool = False, timeout: float = 60.0
    ) -> Iterator[PgServer]:
        server = cls.launch(root, port=port, durable=durable, timeout=timeout)
        try:
            yield server
        finally:
            server.stop()

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
                raise PgUnavailable(f"postgres exited with {self._proc.returncode}:\n{self.log_tail()}")
            if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
                return
            time.sleep(0.05)  # a poll interval, not a wait for readiness
        raise PgUnavailable(f"postgres did not accept connections within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove a temporary directory."""
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
        if self._owned_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
