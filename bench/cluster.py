"""Routers in a cluster and many miners: selection time, tasks/s per miner count, cluster throughput, failover.

Parts (``--parts``, default all):

* ``selection``: the node pool draw (k=3) at 1k / 10k / 100k eligible nodes, in-process.
* ``miners``: one router (SQLite), a swarm of light miners in one process (``bench/swarm.py``: real WebSockets,
  signed messages, no engine) of 100, 1,000 and 10,000 miners; closed-loop k=3 exact tasks: tasks/s and the
  router's CPU per task. Target: with 10,000 miners the router keeps >= 80 % of its 100-miner rate.
* ``cluster``: 1, 2 and 3 routers on one PostgreSQL and one Redis (private servers from Debian's binaries in a
  temporary directory), 300 miners spread over them, load spread over every router: total tasks/s.
* ``failover``: 3 routers under load; one SIGKILLed: seconds until every task it owned has ended elsewhere
  (its tasks' leases lapse, another router takes them over) and whether any accepted task was lost.

    python -m bench.cluster                     # everything (several minutes)
    python -m bench.cluster --parts selection,miners --miners 100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._common import BENCH_KEY, Proc, Procs, free_port, hivemesh_argv, router_data_dir, wait_until

MODEL = "instant-echo"
H = {"authorization": f"Bearer {BENCH_KEY}"}


# ---------------------------------------------------------------------------------------------- the processes


@dataclass
class Cluster:
    """Router processes (and a swarm process) sharing one database and one broker."""

    procs: Procs
    root: Path
    database_url: str | None  # None: each router on its own SQLite (a single router)
    redis_url: str | None
    routers: list[tuple[Proc, int]] = field(default_factory=list)
    swarms: list[Proc] = field(default_factory=list)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.routers[i][1]}"

    def start_router(self, *, mode: str = "exact", queue_timeout: bool = True) -> int:
        i = len(self.routers)
        port = free_port()
        data = router_data_dir(self.root / f"router{i}")
        argv = ["router", "--data-dir", str(data), "--port", str(port), "--mode", mode]
        argv += [
            "-k",
            "3",
            "-m",
            "2",
            "--no-semantic",
            "--log-level",
            os.environ.get("HM_BENCH_LOG", "warning"),
        ]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        if self.redis_url:
            argv += ["--cluster", self.redis_url]
        proc = self.procs.start(f"router{i}", hivemesh_argv(*argv))
        self.routers.append((proc, port))
        wait_until(f"router{i} healthz", lambda: self.health(i) is not None, [proc], timeout=60)
        return i

    def health(self, i: int) -> dict[str, Any] | None:
        try:
            r = httpx.get(self.url(i) + "/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def start_swarm(self, n: int, on: list[int], *, capacity: int = 4, timeout: float = 600) -> Proc:
        argv = [sys.executable, "-m", "bench.swarm", "-n", str(n), "--capacity", str(capacity)]
        for i in on:
            argv += ["--router", self.url(i)]
        proc = self.procs.start(f"swarm{len(self.swarms)}", argv)
        self.swarms.append(proc)
        wait_until(
            f"{n} swarm miners joined", lambda: "swarm joined" in proc.tail(5), [proc], timeout=timeout
        )
        return proc

    def wait_nodes(self, n: int, timeout: float = 60) -> None:
        """Every router sees ``n`` nodes in the network (presence has spread)."""
        procs = [p for p, _ in self.routers if p.alive()]

        def seen() -> bool:
            return all((h := self.health(i)) is not None and h["nodes"] >= n for i in self.live())

        wait_until(f"every router sees {n} nodes", seen, procs, timeout=timeout)

    def live(self) -> list[int]:
        return [i for i, (p, _) in enumerate(self.routers) if p.alive()]

    def kill(self, i: int) -> None:
        os.killpg(self.routers[i][0].pid, signal.SIGKILL)
        self.routers[i][0].popen.wait(10)


@contextlib.contextmanager
def servers(root: Path) -> Iterator[tuple[str, str]]:
    """A private PostgreSQL (one fresh database) and Redis for a cluster run."""
    from hivemesh.cluster.postgres_server import PgServer
    from hivemesh.cluster.redis_server import RedisServer

    with PgServer.start() as pg, RedisServer.running(root / "redis") as redis:
        db = f"bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_create_db(pg.url, db))
        url = pg.url.rsplit("/", 1)[0] + "/" + db
        yield url.replace("postgresql://", "postgresql+asyncpg://", 1), redis.url


async def _create_db(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Load:
    ok: int = 0
    verified: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def load(urls: list[str], *, concurrency: int, duration: float, max_tokens: int = 4) -> Load:
    """Closed loop of k=3 chat completions, spread over ``urls``, for ``duration`` seconds."""
    out = Load()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(headers=H, timeout=60, limits=limits) as client:
        t_end = time.monotonic() + duration

        async def worker(w: int) -> None:
            n = 0
            while time.monotonic() < t_end:
                url = urls[(w + n) % len(urls)]
                n += 1
                try:
                    r = await client.post(url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    out.failed[key] = out.failed.get(key, 0) + 1
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code != 200:
                    key = str(r.status_code)
                    out.failed[key] = out.failed.get(key, 0) + 1
                    continue
                hv = r.json()["hivemesh"]
                out.ok += 1
                out.verified += hv["verdict"] == "verified"
                out.tasks.append(hv["task_id"])

        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        out.seconds = time.monotonic() - t0
    return out


# ---------------------------------------------------------------------------------------------- parts


def part_selection() -> list[tuple[str, str]]:
    from hivemesh.core.pool_index import PoolIndex
    from hivemesh.core.selection import Candidate
    from hivemesh.protocol.wire import NodeId
    from hivemesh.router.pool import NodePool  # noqa: F401  (the index the hub keeps, per class)

    rows = []
    for n in (1_000, 10_000, 100_000):
        idx = PoolIndex(
            Candidate(NodeId(f"0x{i:040x}"), score=(i % 100) / 100, free=1 + i % 4, capacity=4, record=20)
            for i in range(n)
        )
        reps = 2_000
        t0 = time.perf_counter()
        for seed in range(reps):
            idx.draw(seed).take(3)
        draw_ms = (time.perf_counter() - t0) / reps * 1000
        t0 = time.perf_counter()
        for i in range(reps):  # a reservation and its release: two index updates
            c = Candidate(NodeId(f"0x{i:040x}"), score=0.5, free=2, capacity=4, record=20)
            idx.put(c)
        put_ms = (time.perf_counter() - t0) / reps * 1000
        rows.append((f"{n:,}", f"draw k=3 {draw_ms:.3f} ms, update {put_ms:.3f} ms"))
    return rows


def _cpu(proc: Proc) -> float:
    return proc.cpu_seconds()


def part_miners(root: Path, counts: list[int], duration: float, concurrency: int) -> list[tuple[str, str]]:
    rows = []
    base: float | None = None
    for n in counts:
        (root / f"miners{n}").mkdir(parents=True, exist_ok=True)
        with Procs(root / f"miners{n}") as procs:
            c = Cluster(procs, root / f"miners{n}", None, None)
            c.start_router()
            t_join = time.monotonic()
            c.start_swarm(n, [0], capacity=2, timeout=900)
            c.wait_nodes(n, timeout=300)
            joined = time.monotonic() - t_join
            asyncio.run(load([c.url(0)], concurrency=concurrency, duration=2.0))  # warm up
            cpu0 = _cpu(c.routers[0][0])
            res = asyncio.run(load([c.url(0)], concurrency=concurrency, duration=duration))
            cpu = _cpu(c.routers[0][0]) - cpu0
            base = base or res.rate
            rss = _rss_mib(c.routers[0][0].pid)
            rows.append(
                (
                    f"{n:,} miners",
                    f"{res.rate:.1f} tasks/s ({res.rate / base:.0%} of {counts[0]}), "
                    f"{cpu / max(res.ok, 1) * 1000:.1f} ms router CPU/task, verified {res.verified}/{res.ok}, "
                    f"failed {res.failed or 0}, join {joined:.0f} s, router RSS {rss} MiB",
                )
            )
            print(rows[-1], flush=True)
    return rows


def _rss_mib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def part_cluster(root: Path, duration: float, concurrency: int, miners: int) -> list[tuple[str, str]]:
    rows = []
    base: float | None = None
    for n in (1, 2, 3):
        (root / f"cluster{n}").mkdir(parents=True, exist_ok=True)
        with servers(root / f"srv{n}") as (db, redis), Procs(root / f"cluster{n}") as procs:
            c = Cluster(procs, root / f"cluster{n}", db, redis)
            for _ in range(n):
                c.start_router()
            c.start_swarm(miners, list(range(n)), capacity=2)
            c.wait_nodes(miners)
            urls = [c.url(i) for i in range(n)]
            asyncio.run(load(urls, concurrency=concurrency, duration=2.0))
            res = asyncio.run(load(urls, concurrency=concurrency, duration=duration))
            base = base or res.rate
            rows.append(
                (
                    f"{n} router(s)",
                    f"{res.rate:.1f} tasks/s ({res.rate / base:.2f}x), verified {res.verified}/{res.ok}, "
                    f"failed {res.failed or 0}",
                )
            )
            print(rows[-1], flush=True)
    return rows


def failover_run(
    c: Cluster, *, victim: int, duration: float, concurrency: int, deadline: float = 60.0
) -> dict[str, Any]:
    """Load on every router; SIGKILL ``victim`` halfway; then wait until no task is left unfinished.

    Returns the figures: requests answered, tasks in the record, unfinished ones left, seconds from the kill until
    the victim's last task ended elsewhere, and tasks that ran twice (two ``recovered`` events or two ends)."""
    urls = [c.url(i) for i in range(len(c.routers))]

    async def run() -> tuple[Load, float]:
        task = asyncio.create_task(load(urls, concurrency=concurrency, duration=duration))
        await asyncio.sleep(duration / 2)
        c.kill(victim)
        killed = time.monotonic()
        return await task, killed

    res, killed = asyncio.run(run())
    survivors = [c.url(i) for i in c.live()]
    t_left = time.monotonic()
    left = unfinished(c.database_url or "")
    while left and time.monotonic() - killed < deadline:
        time.sleep(0.25)
        left = unfinished(c.database_url or "")
    recovered = time.monotonic() - killed if not left else float("nan")
    stats = task_stats(c.database_url or "")
    errors = _sql(c.database_url or "", "SELECT DISTINCT error FROM tasks WHERE phase = 'failed'")
    return {
        "errors": [r["error"] for r in errors],
        "answered": res.ok,
        "verified": res.verified,
        "client_errors": res.failed,
        "tasks": stats["tasks"],
        "ended": stats["ended"],
        "failed": stats["failed"],
        "unfinished": len(left),
        "taken_over": stats["recovered"],
        "twice": stats["twice"],
        "failover_s": round(recovered, 2),
        "waited_s": round(time.monotonic() - t_left, 2),
        "survivors": survivors,
    }


def _sql(url: str, query: str) -> list[Any]:
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    return asyncio.run(go())


def unfinished(url: str) -> list[str]:
    rows = _sql(url, "SELECT id FROM tasks WHERE phase NOT IN ('ended', 'failed')")
    return [r["id"] for r in rows]


def task_stats(url: str) -> dict[str, int]:
    row = _sql(
        url,
        "SELECT count(*) AS tasks, count(*) FILTER (WHERE phase = 'ended') AS ended, "
        "count(*) FILTER (WHERE phase = 'failed') AS failed FROM tasks",
    )[0]
    rec = _sql(url, "SELECT count(DISTINCT task_id) AS n FROM task_events WHERE phase = 'recovered'")[0]
    twice = _sql(
        url,
        "SELECT count(*) AS n FROM (SELECT task_id FROM task_events WHERE phase IN ('ended', 'failed') "
        "GROUP BY task_id HAVING count(*) > 1) t",
    )[0]
    return {
        "tasks": row["tasks"],
        "ended": row["ended"],
        "failed": row["failed"],
        "recovered": rec["n"],
        "twice": twice["n"],
    }


def part_failover(root: Path, duration: float, concurrency: int, miners: int) -> list[tuple[str, str]]:
    (root / "failover").mkdir(parents=True, exist_ok=True)
    with servers(root / "srvf") as (db, redis), Procs(root / "failover") as procs:
        c = Cluster(procs, root / "failover", db, redis)
        for _ in range(3):
            c.start_router()
        c.start_swarm(miners, [0, 1, 2], capacity=2)
        c.wait_nodes(miners)
        report = failover_run(c, victim=2, duration=duration, concurrency=concurrency)
    print(report, flush=True)
    return [
        ("failover", f"{report['failover_s']} s from SIGKILL until no task is unfinished"),
        ("tasks", json.dumps({k: v for k, v in report.items() if k != "survivors"})),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="selection,miners,cluster,failover")
    p.add_argument("--miners", default="100,1000,10000", help="swarm sizes for the miners part")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per point")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--cluster-miners", type=int, default=300)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    root = Path(tempfile.mkdtemp(prefix="hm-bench-cluster-"))
    out: list[tuple[str, str]] = []
    if "selection" in parts:
        out += part_selection()
    if "miners" in parts:
        out += part_miners(root, [int(x) for x in args.miners.split(",")], args.duration, args.concurrency)
    if "cluster" in parts:
        out += part_cluster(root, args.duration, args.concurrency, args.cluster_miners)
    if "failover" in parts:
        out += part_failover(root, args.duration, args.concurrency, args.cluster_miners)
    print()
    for k, v in out:
        print(f"{k:>16}  {v}")
    if args.json:
        args.json.write_text(json.dumps(dict(out), indent=2))


if __name__ == "__main__":
    main()
