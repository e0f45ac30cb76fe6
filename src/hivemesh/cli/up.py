"""``hivemesh up``: a whole local network in one command.

Starts one router, N miners and a validator, each its own OS process with its own key and data folder under one data dir,
shows progress while the router loads and the miners load the model and join, prints ready-to-paste client
settings, and on Ctrl-C or SIGTERM (or if any process dies) stops everything cleanly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from hivemesh.cli.demo import MINER_POOL, append_once, miner_dir, prepare_economy
from hivemesh.identity import Identity

START_TIMEOUT_S = 600.0
_READY = re.compile(r"router ready url=(\S+)")
_VALIDATOR_READY = "validator ready"


def ensure_validator(data_dir: Path) -> str:
    """The network's validator: its key made once, its address allowed on the router (``validators.txt``)."""
    identity = Identity.load_or_create(data_dir / "validator" / "validator.key")
    append_once(data_dir / "router" / "validators.txt", identity.address)
    return identity.address


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a service manager, ``kill``, a container stop) stops the network as Ctrl-C does."""
    raise KeyboardInterrupt


class Network:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def spawn(self, name: str, args: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self._files.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "hivemesh.cli.main", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only `up`, which stops the children in order
        )

    def dead(self) -> str | None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                return name
        return None

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "router"):  # miners first, router last
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._files:
            f.close()


def run_up(
    *,
    miners: int,
    port: int,
    data_dir: Path,
    engine: str,
    redundancy: int,
    quorum: int,
    mode: str,
    chain: str | None = None,
    semantic: bool = True,
) -> int:
    console = Console(stderr=True)
    data_dir = data_dir.expanduser().resolve()
    anvil = None
    if chain == "local":  # anvil, the contracts, gas money, the demo account and the miners' stakes on chain
        from hivemesh.cli.chain import prepare_chain_economy, start_local_chain

        nodes = [Identity.load_or_create(miner_dir(data_dir, i) / "node.key") for i in range(miners)]
        anvil = start_local_chain(
            data_dir, nodes, [Identity.load_or_create(data_dir / "router" / "router.key")]
        )
        try:
            prepare_chain_economy(data_dir, nodes)
        except BaseException:
            anvil.stop()  # type: ignore[attr-defined]
            raise
    key = prepare_economy(data_dir, miners)
    ensure_validator(data_dir)
    net = Network(data_dir)
    threads = max(1, (os.cpu_count() or 1) // miners)
    k = min(redundancy, miners)
    router_args = ["router", "--data-dir", str(data_dir / "router"), "--port", str(port), "-k", str(k)]
    router_args += ["-m", str(min(quorum, k)), "--mode", mode] + ([] if semantic else ["--no-semantic"])
    log_start = (net.logs / "router.log").stat().st_size if (net.logs / "router.log").exists() else 0
    url = None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C stops the network even when `up` was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and so would every process it starts)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            starting = "router: starting" + (" (loading the embedding model)" if semantic else "")
            t_router = progress.add_task(starting, total=1)
            net.spawn("router", router_args)
            deadline = time.monotonic() + START_TIMEOUT_S
            while url is None:
                if net.dead():
                    raise RuntimeError(f"the router exited:\n{net.tail('router')}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the router did not start in time")
                text = (net.logs / "router.log").read_bytes()[log_start:].decode(errors="replace")
                if m := _READY.search(text):
                    url = m.group(1)
                time.sleep(0.1)
            progress.update(t_router, completed=1, description=f"router: listening on {url}")
            t_miners = progress.add_task(f"miners: loading the model ({engine}) and joining", total=miners)
            for i in range(miners):
                args = ["miner", "--router", url, "--data-dir", str(miner_dir(data_dir, i))]
                args += ["--engine", engine, "--threads", str(threads), "--pool", str(MINER_POOL)]
                net.spawn(f"miner-{i}", args)
            joined = 0
            with httpx.Client(base_url=url, timeout=5) as client:
                while joined < miners:
                    if name := net.dead():
                        raise RuntimeError(f"{name} exited:\n{net.tail(name)}")
                    if time.monotonic() > deadline:
                        raise RuntimeError("the miners did not join in time")
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                        joined = client.get("/healthz").json()["miners"]
                    progress.update(t_miners, completed=joined)
                    time.sleep(0.2)
            progress.update(t_miners, description="miners: joined")
            t_validator = progress.add_task("validator: checking the nodes", total=1)
            vlog = net.logs / "validator.log"
            vlog_start = vlog.stat().st_size if vlog.exists() else 0
            args = ["validator", "--router", url, "--data-dir", str(data_dir / "validator")]
            net.spawn("validator", args + (["--checks", "basic"] if engine == "instant" else []))
            while _VALIDATOR_READY not in vlog.read_bytes()[vlog_start:].decode(errors="replace"):
                if name := net.dead():
                    raise RuntimeError(f"{name} exited:\n{net.tail(name)}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the validator did not check the nodes in time")
                time.sleep(0.1)
            progress.update(t_validator, completed=1, description="validator: nodes checked")
        console.print(
            f"\n[bold green]hivemesh is up[/]: 1 router, {miners} miners, 1 validator, "
            + (
                "token verification (1 generator, 1 verifier)"
                if mode == "token"
                else f"k={k} m={min(quorum, k)} {mode}"
            )
        )
        console.print(f"data: {data_dir}   logs: {net.logs}\n")
        print(f"export OPENAI_BASE_URL={url}/v1")
        print(f"export OPENAI_API_KEY={key}", flush=True)
        console.print("\nPress Ctrl-C to stop.")
        while True:
            if name := net.dead():
                console.print(f"[red]{name} exited[/]:\n{net.tail(name)}")
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nstopping…")
        return 0
    except RuntimeError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the orderly stop short
        try:
            net.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
            if anvil is not None:
                anvil.stop()  # type: ignore[attr-defined]
