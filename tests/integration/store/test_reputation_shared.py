"""Two routers record work of the same nodes in one store, at the same time: the counters add up and every level
outcome is applied once (``store.reputation``: deltas added in SQL, levels moved under a row lock), and each router
reads the other's work back on its next refresh."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from sqlalchemy import select

from hivemesh.core.reputation import Counters, LevelState, apply_outcome
from hivemesh.router.reputation import Reputation
from hivemesh.store import schema as s
from hivemesh.store.db import Store

NODES = [f"0x{i:040x}" for i in range(1, 6)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_database"))


async def _serve(rep: Reputation, tasks: dict[str, int], rng: random.Random) -> None:
    """Record ``tasks[node]`` finished tasks, all successes, flushing now and then as the flush loop does."""
    work = [node for node, n in tasks.items() for _ in range(n)]
    rng.shuffle(work)
    for i, node in enumerate(work):
        rep.record(node, Counters(assigned=1, acked=1, in_consensus=1, tokens=7), True)
        if i % 7 == 6:
            await rep.flush()
        await asyncio.sleep(0)


async def test_two_routers_counters_and_levels_add_up(db_url: str) -> None:
    a_store, b_store = await Store.open(db_url), await Store.open(db_url)
    a, b = Reputation(a_store, flush_s=3600), Reputation(b_store, flush_s=3600)
    await a.load()
    await b.load()
    try:
        on_a = {n: 6 + i for i, n in enumerate(NODES)}
        on_b = {n: 4 + 2 * i for i, n in enumerate(NODES)}
        await asyncio.gather(_serve(a, on_a, random.Random(1)), _serve(b, on_b, random.Random(2)))
        await asyncio.gather(a.flush(), b.flush())

        stats = {r["node"]: r for r in await a_store.fetch_all(select(s.node_stats))}
        levels = {r["node"]: r for r in await a_store.fetch_all(select(s.node_levels))}
        for n in NODES:
            served = on_a[n] + on_b[n]
            assert (stats[n]["assigned"], stats[n]["tokens"]) == (served, 7 * served), n
            # every success moved the stored level once: the same state as one router that saw them all
            state = LevelState(
                levels[n]["level"], levels[n]["streak"], levels[n]["successes"], levels[n]["attempts"]
            )
            assert state == _all_successes(served), n

        # each router reads the other's work back: B's view of a node is the network's
        rescored: list[set[str]] = []
        a.on_refresh = lambda nodes: rescored.append(set(nodes))
        await b.refresh()
        await a.refresh()
        for rep in (a, b):
            for n in NODES:
                assert rep.window(n).assigned == on_a[n] + on_b[n]
                assert rep.levels[n] == _all_successes(on_a[n] + on_b[n])
        assert rescored == [set(NODES)]  # the node pool rescores what moved, and only that
        await a.refresh()
        assert rescored == [set(NODES)]
    finally:
        await a.close()
        await b.close()
        await a_store.close()
        await b_store.close()


def _all_successes(n: int) -> LevelState:
    state = LevelState()
    for _ in range(n):
        state = apply_outcome(state, True)
    return state
