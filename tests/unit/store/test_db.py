"""The store's group-commit writer: batches commit together, and one bad write never takes the others down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from hivemesh.store import schema as s
from hivemesh.store.db import Store


def event(task: str) -> object:
    return insert(s.task_events).values(task_id=task, ts=time.time(), phase="x", node=None, detail={})


async def test_batch_commits_and_a_bad_statement_fails_alone(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        dup = insert(s.nodes).values(
            address="0xA", first_seen=0, last_seen=0, models=[], capacity=1, pool=0, hardware={}, version=""
        )
        await store.write(dup)
        futs = [store.submit(event("t1")), store.submit(dup), store.submit(event("t2"))]  # one batch
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], Exception)  # the duplicate primary key, and only it
        rows = await store.fetch_all(select(s.task_events.c.task_id))
        assert sorted(r["task_id"] for r in rows) == ["t1", "t2"]
    finally:
        await store.close()


async def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    for _ in range(2):  # the second open finds every migration applied
        await (await Store.open(url)).close()
    store = await Store.open(url)
    try:
        from sqlalchemy import text

        rows = await store.fetch_all(text("SELECT name FROM _migrations ORDER BY name"))
        assert [r["name"] for r in rows] == [name for name, _ in s.MIGRATIONS]
    finally:
        await store.close()


@pytest.mark.parametrize("n", [50])
async def test_many_concurrent_writes_all_land(tmp_path: Path, n: int) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        await asyncio.gather(*(store.write(event(f"t{i}")) for i in range(n)))
        rows = await store.fetch_all(select(s.task_events.c.task_id))
        assert len(rows) == n
    finally:
        await store.close()
