"""``hivemesh up --routers N``: a local cluster in one command.

Starts a private PostgreSQL (the durable record: tasks, sessions, ledger, reputation) and a private Redis (the
broker: presence, relaying, task leases, shared limits) from Debian's binaries on free loopback ports, with their
data under the data dir (kept across runs); then N routers sharing them (ports ``port``, ``port+1``, ...) and the
miners spread over the routers, each its own process. Any router serves with any miner. Ctrl-C or SIGTERM (or
any process dying) stops everything, the servers last. A missing ``postgres`` or ``redis-server`` binary is one
sentence naming the package to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
from rich.console import Console

from hivemesh.cli.up import Network, _interrupt
from hivemesh.cluster.postgres_server import PgServer, PgUnavailable
from hivemesh.cluster.redis_server import BrokerUnavailable, RedisServer

START_TIMEOUT_S = 180.0
DATABASE = "hivemesh"


async def _ensure_database(url: str, name: str) -> str:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.rsplit("/", 1)[0] + "/" + name


def _up(url: str, nodes: int = 0) -> bool:
    """The router answers, and sees at least ``nodes`` nodes in the network."""
    try:
        r = httpx.get(url + "/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and int(r.json().get("nodes", 0)) >= nodes


def run_cluster_up(
    *,
    routers: int,
    miners: int,
    port: int,
    data_dir: Path,
    engine: str,
    redundancy: int,
    quorum: int,
    mode: str,
) -> int:
    console = Console(stderr=True)
    data_dir = data_dir.expanduser().resolve()
    try:
        pg = PgServer.launch(data_dir / "postgres", durable=True)
    except PgUnavailable as exc:
        console.print(f"[red]error:[/] cannot start PostgreSQL for the cluster: {exc}")
        return 1
    try:
        redis = RedisServer.launch(data_dir / "redis", persist=True)
    except BrokerUnavailable as exc:
        pg.stop()
        console.print(f"[red]error:[/] cannot start Redis for the cluster: {exc}")
        return 1
    net = Network(data_dir)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C stops the network even when `up` was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and so would every process it starts)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        db = asyncio.run(_ensure_database(pg.url, DATABASE))
        console.print(f"PostgreSQL {pg.url.rsplit('@', 1)[-1]}  Redis {redis.url}")
        k = min(redundancy, max(miners, 1))
        urls = [f"http://127.0.0.1:{port + i}" for i in range(routers)]
        for i, url in enumerate(urls):
            args = ["router", "--data-dir", str(data_dir / f"router{i}"), "--port", str(port + i)]
            args += ["--database-url", db, "--ledger-url", db, "--cluster", redis.url]
            args += ["-k", str(k), "-m", str(min(quorum, k)), "--mode", mode, "--no-semantic"]
            net.spawn(f"router{i}", args)
            _wait(net, f"router{i}", partial(_up, url))
            console.print(f"router{i} ready {url}")
        for j in range(miners):
            url = urls[j % routers]
            mdir = data_dir / "miners" / f"m{j}"
            net.spawn(f"miner{j}", ["miner", "--router", url, "--data-dir", str(mdir), "--engine", engine])

        _wait(net, "miners", partial(_up, urls[0], miners))
        console.print(f"[green]cluster ready[/]: {routers} routers, {miners} miners (one network)")
        for url in urls:
            console.print(f"  OPENAI_BASE_URL={url}/v1")
        console.print(f"logs: {net.logs}   Ctrl-C stops everything")
        while (dead := net.dead()) is None:
            time.sleep(0.5)
        console.print(f"[red]{dead} exited[/]:\n{net.tail(dead)}")
        return 1
    except KeyboardInterrupt:
        return 0
    except TimeoutError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        net.stop()
        with contextlib.suppress(Exception):
            redis.stop()
        with contextlib.suppress(Exception):
            pg.stop()


def _wait(net: Network, what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if (dead := net.dead()) is not None:
            raise TimeoutError(f"{dead} exited while starting {what}:\n{net.tail(dead)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.2)
