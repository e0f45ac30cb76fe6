"""A local chain for laptops and tests: anvil, from the npm package ``@foundry-rs/anvil`` (which ships the
binary), installed once into hivemesh's cache directory by ``scripts/setup`` (or ``python -m
hivemesh.chain.anvil install``), then started on a loopback port.

    with Anvil.start() as node:
        chain = Chain.connect(node.url)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx
import platformdirs

ANVIL_VERSION = "1.7.1"
# anvil's well-known first dev account (mnemonic "test test ... junk"): funded on every fresh anvil chain
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("hivemesh", appauthor=False)) / f"anvil-{ANVIL_VERSION}"


def find_anvil() -> Path | None:
    """``$HIVEMESH_ANVIL``, else the copy installed into the cache, else ``anvil`` on the PATH."""
    if env := os.environ.get("HIVEMESH_ANVIL"):
        return Path(env)
    for binary in sorted((cache_dir() / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")):
        if os.access(binary, os.X_OK):
            return binary
    found = shutil.which("anvil")
    return Path(found) if found else None


def install_anvil() -> Path:
    """Install ``@foundry-rs/anvil`` with npm into the cache (idempotent); return the binary."""
    if (found := find_anvil()) is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: install Node.js (npm) to run a local chain")
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            npm,
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(target),
            f"@foundry-rs/anvil@{ANVIL_VERSION}",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    found = find_anvil()
    if found is None:
        raise RuntimeError(
            f"npm installed @foundry-rs/anvil into {target} but no anvil binary for this platform"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Anvil:
    """One anvil process on 127.0.0.1 (automining: a transaction is mined as it arrives)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: IO[bytes] | None) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        chain_id: int = 31337,
        state: Path | None = None,
        log_path: Path | None = None,
        timeout: float = 30.0,
    ) -> Anvil:
        binary = find_anvil()
        if binary is None:
            raise RuntimeError(
                "anvil is not installed: run scripts/setup (or python -m hivemesh.chain.anvil install)"
            )
        port = port or free_port()
        args = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id)]
        args += ["--accounts", "2", "--balance", "10000000", "--silent"]
        if state is not None:
            args += ["--state", str(state)]  # load it at start, dump it on exit
        log = log_path.open("ab") if log_path else None
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        node = cls(proc, port, log)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                node.stop()
                raise RuntimeError(f"anvil exited with status {proc.returncode} at start")
            try:
                r = httpx.post(node.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, timeout=1)
                if r.is_success:
                    return node
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                node.stop()
                raise RuntimeError(f"anvil did not answer on {node.url} within {timeout:.0f} s")
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): the chain stops answering, its state kept."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":  # python -m hivemesh.chain.anvil install
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m hivemesh.chain.anvil install")
    try:
        print(install_anvil())
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        sys.exit(f"anvil not installed: {exc}")
