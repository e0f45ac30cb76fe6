"""A private Redis server on a loopback port, started from Debian's ``redis-server`` binary.

Used by the test fixtures and by ``hivemesh up --routers N``: the cluster's broker (presence with expiry,
network-wide rate-limit counters, pub/sub for relaying and invalidations) without any system service.

    with RedisServer.running(data_dir) as server:
        server.url  # redis://127.0.0.1:<port>/0

``RedisServer.launch(...)`` / ``server.stop()`` do the same without a ``with`` block. The server listens on
127.0.0.1 only, keeps its files (log, pid, and a snapshot if ``persist``) in ``data_dir``, and is stopped with
``SHUTDOWN NOSAVE`` (or SIGTERM, then SIGKILL). Readiness is a ``PING`` answered ``+PONG``, polled, never a sleep.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "apt-get install -y redis-server (Debian's package)"


class BrokerUnavailable(RuntimeError):
    """No ``redis-server`` binary here, or it did not start."""


def find_redis_server() -> Path | None:
    """``redis-server`` on PATH, else Debian's ``/usr/bin/redis-server``."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float = 1.0) -> bool:
    """True when a Redis server on 127.0.0.1:``port`` answers ``PING`` (raw RESP: no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    url: str  # redis://127.0.0.1:<port>/0
    port: int
    data_dir: Path
    _proc: subprocess.Popen[bytes]
    _owned_dir: bool = field(default=False)

    @classmethod
    def launch(
        cls, data_dir: Path | None = None, *, port: int = 0, persist: bool = False, timeout: float = 30.0
    ) -> RedisServer:
        """Start ``redis-server`` and wait until it answers; ``port=0`` picks a free loopback port.

        ``data_dir=None`` uses a temporary directory, removed by ``stop()``. ``persist=False`` (tests, a local
        cluster) keeps everything in memory; ``True`` snapshots to ``data_dir/dump.rdb`` every minute.
        """
        binary = find_redis_server()
        if binary is None:
            raise BrokerUnavailable(f"no redis-server binary found; install it: {INSTALL_HINT}")
        owned = data_dir is None
        root = Path(tempfile.mkdtemp(prefix="hivemesh-redis-")) if data_dir is None else data_dir
        root.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(3):  # a free port can be taken between the probe and the bind
                chosen = port or free_port()
                proc = cls._spawn(binary, root, chosen, persist)
                server = cls(f"redis://127.0.0.1:{chosen}/0", chosen, root, proc, owned)
                try:
                    server._wait_ready(timeout)
                    return server
                except BrokerUnavailable:
                    server._kill()
                    if port or attempt == 2:
                        raise
            raise AssertionError("unreachable")
        except BaseException:
            if owned:
                shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, data_dir: Path | None = None, *, port: int = 0, persist: bool = False, timeout: float = 30.0
    ) -> Iterator[RedisServer]:
        server = cls.launch(data_dir, port=port, persist=persist, timeout=timeout)
        try:
            yield server
        finally:
            server.stop()

    @staticmethod
    def _spawn(binary: Path, root: Path, port: int, persist: bool) -> subprocess.Popen[bytes]:
        args = [
            str(binary),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(root),
            "--logfile", "redis.log",
            "--pidfile", str(root / "redis.pid"),
            "--daemonize", "no",
            "--appendonly", "no",
            "--save", "60 1" if persist else "",
            "--databases", "16",
        ]  # fmt: skip
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerUnavailable(
                    f"redis-server exited with {self._proc.returncode}: {err.strip()}\n{self.log_tail()}"
                )
            if ping(self.port, timeout=0.5):
                return
            time.sleep(0.02)  # a poll interval, not a wait for readiness
        raise BrokerUnavailable(f"redis-server did not answer PING within {timeout:.0f}s:\n{self.log_tail()}")

    def running_now(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        """Stop the server (no snapshot unless ``persist``) and remove a temporary data dir."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 2) as s:
                s.sendall(b"SHUTDOWN\r\n")
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._proc.stderr:
            self._proc.stderr.close()
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._proc.stderr:
            self._proc.stderr.close()

    def log_tail(self) -> str:
        try:
            return (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
