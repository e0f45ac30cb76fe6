"""``/dashboard/api/nodes`` at 10,000 nodes: one page at a time, every node exactly once across the pages, and a
page within 50 ms (in-process: a real store holding 10,000 node rows, a real reputation with a day of hourly
counters for each node, 2,000 of them online)."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hivemesh.core.reputation import Counters
from hivemesh.dashboard import views
from hivemesh.dashboard.routes import dashboard_routes
from hivemesh.errors import HivemeshError, InvalidRequest
from hivemesh.protocol.wire import Hardware
from hivemesh.router.reputation import Reputation, bucket_of
from hivemesh.store import schema as s
from hivemesh.store.db import Store

NODES = 10_000
ONLINE = 2_000
HOURS = 24


@dataclass
class Link:
    node: str
    models: frozenset[str] = frozenset({"m"})
    capacity: int = 2
    inflight: int = 0
    hardware: Hardware = field(default_factory=Hardware)
    version: str = "1"
    connected_at: float = 0.0
    finished: int = 0


@dataclass
class Hub:
    links: dict[str, Link]
    remote: dict[str, Any] = field(default_factory=dict)  # a router on its own: no other router's nodes


@dataclass
class Scheduler:
    depth: int = 0


@dataclass
class Ident:
    address: str = "0xrouter"


@dataclass
class Source:
    hub: Hub
    store: Store
    reputation: Reputation
    scheduler: Scheduler = field(default_factory=Scheduler)
    identity: Ident = field(default_factory=Ident)
    started_at: float = 0.0
    observers: list[Any] = field(default_factory=list)
    ledger: Any = None


def address(i: int) -> str:
    return f"0x{i:040x}"


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[Source]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'router.db'}")
    now = time.time()
    rows = [
        {
            "address": address(i),
            "first_seen": now - 86_400,
            "last_seen": now - (i % 48) * 1800,  # half seen within the day
            "models": [{"id": "m"}],
            "capacity": 2,
            "pool": 0,
            "hardware": {},
            "version": "1",
        }
        for i in range(NODES)
    ]
    await store.write((insert(s.nodes), rows))
    rep = Reputation(store)
    hour = bucket_of(now)
    for i in range(NODES):
        per = rep.buckets[address(i)]
        for h in range(i % HOURS + 1):
            n = 10 + i % 7
            per[hour - h * 3600] = Counters(
                assigned=n,
                acked=n,
                precommitted_on_time=n - i % 3,
                committed=n - i % 3,
                valid_reveals=n - i % 5,
            )
    hub = Hub({address(i): Link(address(i)) for i in range(ONLINE)})
    yield Source(hub, store, rep)
    await store.close()


def app(src: Source) -> Starlette:
    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HivemeshError)
        return JSONResponse({"error": {"message": str(exc)}}, status_code=400)

    return Starlette(routes=dashboard_routes(src), exception_handlers={HivemeshError: on_error})


async def test_pages_cover_every_node_once_best_first(source: Source) -> None:
    transport = httpx.ASGITransport(app=app(source))
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
        seen: list[tuple[float, str]] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
            r = await c.get("/dashboard/api/nodes", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["data"]) <= 1000 and len(body["hours"]) == HOURS
            seen += [(-source.reputation.total(row["node"]), row["node"]) for row in body["data"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert body["count"] == NODES == len(seen) == len(set(seen))  # every node scored in the window
        assert seen == sorted(seen) and pages == 10
        first = (await c.get("/dashboard/api/nodes", params={"limit": 5})).json()["data"]
        assert [r["node"] for r in first] == [n for _, n in seen[:5]]
        assert all(r["hours"] and r["hours"][-1]["assigned"] > 0 for r in first)
        assert (await c.get("/dashboard/api/nodes", params={"cursor": "nope!"})).status_code == 400
        assert (await c.get("/dashboard/api/nodes", params={"limit": 0})).status_code == 400


async def test_a_page_at_ten_thousand_nodes_costs_far_less_than_the_whole_list(source: Source) -> None:
    transport = httpx.ASGITransport(app=app(source))
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
        walls, cpus = [], []
        for _ in range(7):
            wall, cpu = time.perf_counter(), time.process_time()
            r = await c.get("/dashboard/api/nodes")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            assert r.status_code == 200 and len(r.json()["data"]) == 100
        print(
            f"/dashboard/api/nodes at {NODES} nodes: wall median {statistics.median(walls) * 1000:.1f} ms,"
            f" CPU median {statistics.median(cpus) * 1000:.1f} ms, {len(r.content)} bytes"
        )
        # CPU time (this process, every thread): what the view costs, not what the shared machine's load adds. The
        # unpaged view took 1.6 s here; the paged one ~50 ms (bench figure). The bound catches a return to O(n) work
        # per request without timing the machine's load.
        assert statistics.median(cpus) < 0.4 and len(r.content) < 200_000


def test_cursor_round_trip_and_rejects_forgeries() -> None:
    assert views.decode_cursor(views.encode_cursor(0.1234, "0xa")) == (0.1234, "0xa")
    for bad in ("", "x", "WzEsMl0", "WyJhIiwiYiJd"):  # empty, junk, [1,2], ["a","b"]
        with pytest.raises(InvalidRequest):
            views.decode_cursor(bad)
