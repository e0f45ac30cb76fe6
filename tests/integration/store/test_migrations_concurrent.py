"""Several routers starting at once on one fresh database: none crashes, and each migration is applied once.

Each router is a real process (``spawn``): it imports hivemesh, waits at a barrier with the others, then opens
the store and the ledger on the same URL, as a router given one database for both does (``Store.open(url)``,
``Ledger.open(url)``), and reports the store migrations it applied (its log lines) or its error. The ledger's
migrations are checked in ``ledger_migrations``: each version recorded once.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from sqlalchemy import text

from hivemesh.ledger import Ledger
from hivemesh.ledger import schema as ls
from hivemesh.store import schema as s
from hivemesh.store.db import Store

ROUTERS = 6


class _Applied(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("migration applied"):
            self.names.append(record.getMessage().split("name=", 1)[1])


def _router(url: str, barrier: Barrier, out: Queue[tuple[str, list[str]]]) -> None:
    applied = _Applied()
    log = logging.getLogger("hivemesh.store.db")
    log.setLevel(logging.INFO)
    log.addHandler(applied)

    async def start() -> None:
        store = await Store.open(url)
        ledger = await Ledger.open(url)
        await ledger.close()
        await store.close()

    barrier.wait(timeout=60)
    try:
        asyncio.run(start())
    except Exception as exc:
        out.put((f"{type(exc).__name__}: {exc}"[:500], applied.names))
    else:
        out.put(("", applied.names))


def _start_together(url: str) -> list[tuple[str, list[str]]]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(ROUTERS)
    out: Queue[tuple[str, list[str]]] = ctx.Queue()
    procs = [ctx.Process(target=_router, args=(url, barrier, out)) for _ in range(ROUTERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return results


async def _recorded(url: str) -> tuple[list[str], list[int]]:
    store = await Store.open(url)
    try:
        rows = await store.fetch_all(text("SELECT name FROM _migrations ORDER BY name"))
        versions = await store.fetch_scalars(text("SELECT version FROM ledger_migrations ORDER BY version"))
        return [r["name"] for r in rows], versions
    finally:
        await store.close()


def _check(url: str) -> None:
    results = _start_together(url)
    assert [err for err, _ in results if err] == []
    applied = sorted(name for _, names in results for name in names)
    assert applied == sorted(name for name, _ in s.MIGRATIONS)  # all of them, each by one router
    assert asyncio.run(_recorded(url)) == (
        sorted(name for name, _ in s.MIGRATIONS),
        [m.version for m in ls.MIGRATIONS],
    )


@pytest.mark.parametrize("attempt", range(3))
def test_routers_starting_together_on_sqlite(tmp_path: Path, attempt: int) -> None:
    _check(f"sqlite+aiosqlite:///{tmp_path / 'router.db'}")


@pytest.mark.postgres
@pytest.mark.parametrize("attempt", range(2))
def test_routers_starting_together_on_postgresql(pg_database: str, attempt: int) -> None:
    _check(pg_database)
