"""Ledger throughput: settlements per second and reserve/settle latency under N concurrent tasks.

Each task is the router's hot path for one request: ``reserve`` from a session's escrow, then ``settle`` paying
three of ``--miners`` miners plus (optionally) a treasury fee and releasing the rest. Runs on SQLite (a temp file) and
on PostgreSQL: ``--pg-url`` (a server where this user may CREATE DATABASE), else a throwaway server started
from Debian's binaries like the test fixture does, else PostgreSQL is skipped.

    python bench/bench_ledger.py --concurrency 1 16 64 --settlements 1000 --shards 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from eth_utils.address import to_checksum_address
from sqlalchemy.engine import make_url

from hivemesh.ledger import COR, Ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "ledger"))
from ledger_pgserver import PgServer, PgUnavailable

USER = str(to_checksum_address("0x" + "12" * 20))


@dataclass
class Result:
    backend: str
    shards: int
    concurrency: int
    fee: bool
    settlements: int
    seconds: float
    reserve_ms: list[float]
    settle_ms: list[float]
    cpu_s: float  # this process's CPU over the run (the ledger's Python, its writer thread and the driver)

    def row(self) -> list[str]:
        def pct(xs: list[float], q: float) -> str:
            return f"{statistics.quantiles(xs, n=100)[int(q) - 1]:.2f}" if len(xs) >= 2 else "-"

        return [
            self.backend,
            str(self.shards),
            str(self.concurrency),
            "yes" if self.fee else "no",
            f"{self.settlements / self.seconds:,.0f}",
            f"{self.cpu_s * 1000 / self.settlements:.3f}",
            pct(self.reserve_ms, 50),
            pct(self.reserve_ms, 99),
            pct(self.settle_ms, 50),
            pct(self.settle_ms, 99),
        ]


async def run(
    url: str,
    backend: str,
    shards: int,
    concurrency: int,
    total: int,
    fee: bool,
    miners: int,
    default_session: bool = False,
) -> Result:
    payees = [str(to_checksum_address(f"0x{i:040x}")) for i in range(0x100, 0x100 + miners)]
    ledger = await Ledger.open(url, chain_shards=shards, pool_size=max(5, concurrency))
    try:
        await ledger.deposit(USER, 10**9 * COR)
        for w in range(concurrency):
            await ledger.fund_session(f"s{w}", USER, 10**6 * COR)
        reserve_ms: list[float] = []
        settle_ms: list[float] = []
        queue = iter(range(total))

        async def worker(w: int) -> None:
            rng = random.Random(w)
            for i in queue:
                task = f"task{i}"
                t0 = time.perf_counter()
                if default_session:  # one session for all, topped up from the account as needed
                    await ledger.reserve("default", task, COR, top_up_from=USER)
                else:
                    await ledger.reserve(f"s{w}", task, COR)
                t1 = time.perf_counter()
                payouts = {m: COR // 10 for m in rng.sample(payees, 3)}
                await ledger.settle(task, payouts, treasury_fee=COR // 100 if fee else 0)
                t2 = time.perf_counter()
                reserve_ms.append((t1 - t0) * 1000)
                settle_ms.append((t2 - t1) * 1000)

        start, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        report = await ledger.verify()
        if not report.ok:
            raise SystemExit(f"verify failed after the run: {report.reason}")
        backend += " default" if default_session else ""
        return Result(backend, shards, concurrency, fee, total, seconds, reserve_ms, settle_ms, cpu)
    finally:
        await ledger.close()


@contextlib.contextmanager
def postgres(args: argparse.Namespace) -> Iterator[str | None]:
    if args.no_pg:
        yield None
    elif args.pg_url:
        yield args.pg_url
    else:
        try:
            with PgServer.start(durable=not args.pg_no_fsync) as server:
                yield server.url
        except PgUnavailable as e:
            print(f"PostgreSQL skipped: {e}", file=sys.stderr)
            yield None


async def fresh_pg_database(server: str) -> str:
    name = f"hm_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(make_url(server).set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(server).set(drivername="postgresql+asyncpg", database=name).render_as_string(False)


async def main(args: argparse.Namespace) -> None:
    results: list[Result] = []
    with postgres(args) as pg, tempfile.TemporaryDirectory() as tmp:
        for backend in ("sqlite", "postgres"):
            if backend == "postgres" and pg is None:
                continue
            for shards in args.shards:
                for concurrency in args.concurrency:
                    for fee in (False, True) if args.both_fees else (True,):
                        if backend == "sqlite":
                            url = f"sqlite+aiosqlite:///{Path(tmp) / uuid.uuid4().hex}.db"
                        else:
                            assert pg is not None
                            url = await fresh_pg_database(pg)
                        r = await run(url, backend, shards, concurrency, args.settlements, fee, args.miners)
                        results.append(r)
                        print(" | ".join(r.row()), file=sys.stderr, flush=True)
                        if args.default_session:
                            url = (
                                url.replace(".db", "-d.db")
                                if backend == "sqlite"
                                else await fresh_pg_database(pg or "")
                            )
                            r = await run(
                                url, backend, shards, concurrency, args.settlements, fee, args.miners, True
                            )
                            results.append(r)
                            print(" | ".join(r.row()), file=sys.stderr, flush=True)
    header = [
        "backend",
        "shards",
        "tasks",
        "fee",
        "settle/s",
        "CPU ms",
        "reserve p50",
        "p99",
        "settle p50",
        "p99",
    ]
    rows = [header] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(
        f"latencies in ms; each settlement = reserve + settle (3 of {args.miners} miners, fee, release); "
        "CPU ms: this process's CPU per settlement (reserves and settlements are group-committed)"
    )
    for n, row in enumerate(rows):
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settlements", type=int, default=1000, help="settlements per configuration")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="concurrent tasks")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 8], help="hash-chain shards")
    p.add_argument("--miners", type=int, default=32, help="miners to pay (3 per task): fewer = hotter rows")
    p.add_argument("--both-fees", action="store_true", help="also run without a treasury fee (no hot row)")
    p.add_argument("--pg-url", help="postgresql+asyncpg://user@host:port/db of a server to use")
    p.add_argument("--pg-no-fsync", action="store_true", help="throwaway server with fsync off")
    p.add_argument("--no-pg", action="store_true", help="SQLite only")
    p.add_argument(
        "--default-session",
        action="store_true",
        help="also run with one shared session topped up from the account at each reserve (a key's default)",
    )
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
