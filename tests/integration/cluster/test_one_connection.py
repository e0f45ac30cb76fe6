"""One connection per node in the cluster (two routers on one PostgreSQL and one Redis, real miners).

* A node connected to router A that dials router B too (a second miner process with the same key) is refused by B
  with close code 4409 and a reason naming A, before B registers it; the miner backs off (it does not spin) and
  logs the reason once. B serves the node through A, counting it once; once A stops, the node's retry lands on B.
* Two links to one node at once (B took the node while its entry was lost, as after a broker restart): Redis's
  entry decides, the other router closes its link, and the task it had running on it fails over to another node.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from hivemesh.config import MinerConfig
from hivemesh.engines.instant import InstantEngine
from hivemesh.identity import Identity
from hivemesh.miner.agent import MinerAgent
from hivemesh.protocol import wire
from hivemesh.router.links import RelayLink

from ...conftest import API_KEY, Network, until
from ...unit.router.memory import Pipe, join

MODEL = "instant-echo"
H = {"authorization": f"Bearer {API_KEY}"}
pytestmark = pytest.mark.postgres


# the servers' fixtures come before ``two`` in each test: the routers stop before their database is dropped
def _start(a: Network, b: Network, database: str, redis_url: str) -> None:
    for net in (a, b):
        net.start_router(database_url=database, ledger_url=database, cluster_url=redis_url)


def _ask(net: Network) -> httpx.Response:
    return httpx.post(
        f"{net.url}/v1/chat/completions",
        headers=H,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )


def _held(net: Network, node: str) -> int:
    """How many times ``node`` is in the router's node pool (its own link or another router's)."""
    return sum(1 for ln in net.service.hub.members() if ln.node == node)


@pytest.mark.timeout(90)
def test_a_node_connected_to_one_router_is_refused_by_another_and_moves_when_it_stops(
    pg_database: str,
    redis_url: str,
    two: tuple[Network, Network],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hivemesh")
    a, b = two
    _start(a, b, pg_database, redis_url)
    router_a = a.service.identity.address
    node = a.add_miner("n", reconnect_max_s=1.0).identity.address
    until(lambda: node in b.service.hub.remote, timeout=10.0)

    # a second miner process with the same key dials B
    key = b.data_dir / "miners" / "n" / "node.key"
    key.parent.mkdir(parents=True)
    shutil.copy(a.data_dir / "miners" / "n" / "node.key", key)
    started = time.monotonic()
    twin = b.add_miner("n", wait=False, reconnect_max_s=1.0)
    assert twin.identity.address == node

    def refusals() -> list[logging.LogRecord]:  # B's, one per hello it refused
        return [r for r in caplog.records if "reason=held elsewhere" in r.getMessage()]

    until(lambda: len(refusals()) >= 4, timeout=10.0)
    # back-off, not a spin: four refused hellos take at least 0.2 + 0.4 + 0.8 s of waiting
    assert time.monotonic() - started >= 1.4
    assert all(node in r.getMessage() and router_a in r.getMessage() for r in refusals())
    told = [
        r.getMessage()
        for r in caplog.records
        if r.name == "hivemesh.miner.agent" and "refused" in r.getMessage()
    ]
    assert len(told) == 1, told  # the miner logs the reason once, not on every retry
    assert f"{wire.CLOSE_HELD_ELSEWHERE} node {node[:10]}" in told[0]
    assert f"is connected through router {router_a}; one connection per node" in told[0]
    assert not twin.connected.is_set()

    # B never registered it: the node is A's, served on B through the relay, and counted once on each router
    assert node in a.service.hub.links and node not in b.service.hub.links
    remote = b.service.hub.remote[node]
    assert isinstance(remote, RelayLink) and remote.holder == router_a
    assert _held(a, node) == _held(b, node) == 1
    assert b.service.hub.pool.serves(MODEL) == 1
    r = _ask(b)
    assert r.status_code == 200, r.text
    assert r.json()["hivemesh"]["miners"] == [node]
    assert a.agents["n"].served == 1 and twin.served == 0

    # A stops: its entries go with it, and the twin's next retry is welcomed by B
    a.stop_router()
    until(lambda: node in b.service.hub.links and twin.connected.is_set(), timeout=15)
    assert _held(b, node) == 1 and node not in b.service.hub.remote
    r = _ask(b)
    assert r.status_code == 200, r.text
    assert r.json()["hivemesh"]["miners"] == [node] and twin.served == 1


@pytest.mark.timeout(90)
def test_two_links_to_one_node_leave_one_and_the_losers_task_fails_over(
    pg_database: str, redis_url: str, two: tuple[Network, Network], tmp_path: Path
) -> None:
    a, b = two
    _start(a, b, pg_database, redis_url)
    router_a, router_b = a.service.identity.address, b.service.identity.address
    identity = Identity.generate()
    node = identity.address
    pipes: list[Pipe] = []

    async def connect(net: Network) -> None:  # the node's miner, joined in memory (no hello claim: see below)
        cfg = MinerConfig(router_url="memory://", data_dir=tmp_path / "n", engine="instant")
        engine = InstantEngine(MODEL, tokens=8, token_delay_s=0.25)
        pipes.append(await join(net.service.hub, MinerAgent(cfg, identity, engine)))

    a.lt.run(connect(a))
    until(lambda: node in b.service.hub.remote, timeout=10.0)

    other = b.add_miner("m").identity.address  # somewhere for the task to go
    until(lambda: other in a.service.hub.remote, timeout=10.0)

    # a task on A runs on the node through A's link (the draw may pick the other node: then ask again)
    pool = ThreadPoolExecutor(1)
    for _ in range(20):
        reply = pool.submit(_ask, a)
        until(lambda f=reply: a.service.hub.links[node].inflight == 1 or f.done(), timeout=10.0)
        if not reply.done():
            break
        assert reply.result().status_code == 200
    assert a.service.hub.links[node].inflight == 1

    async def race() -> None:
        # the broker lost the node's entry (a restart) and B took a connection of the node meanwhile
        r = aioredis.from_url(redis_url)
        try:
            await r.hdel(b.service.broker.key("nodes"), node)
        finally:
            await r.aclose()
        await connect(b)

    a.lt.run(race())
    # B claimed the missing entry first: on every router, Redis's entry says B, so A's link is the one closed
    until(lambda: node not in a.service.hub.links, timeout=10.0)
    assert node in b.service.hub.links
    holder = a.service.hub.remote[node]
    assert isinstance(holder, RelayLink) and holder.holder == router_b
    assert _held(a, node) == _held(b, node) == 1

    async def entry() -> Any:
        r = aioredis.from_url(redis_url)
        try:
            return await r.hget(b.service.broker.key("nodes"), node)
        finally:
            await r.aclose()

    assert b'"router": "' + router_b.encode() in a.lt.run(entry())
    # the task A ran on its closed link failed over to the other node and was answered once
    r = reply.result(30)
    pool.shutdown()
    assert r.status_code == 200, r.text
    assert r.json()["hivemesh"]["answered_by"] == other
    task_id = r.json()["hivemesh"]["task_id"]
    until(lambda: (a.lt.run(a.service.store.get_task(task_id)) or {}).get("phase") == "ended", timeout=10.0)
    assert router_a not in {ln.holder for ln in b.service.hub.remote.values()}
    for p in pipes:
        a.lt.run(asyncio.wait_for(p.cut(), 5))
