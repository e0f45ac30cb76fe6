"""A client that goes away cancels its task on every miner: streaming or not, voting or token mode.

Slow instant miners (one task at a time, 20 ms a token, 400 tokens: 8 s a task) show it: after the client hangs
up, every miner's job list empties at once, the task record ends ``failed`` ("client disconnected") with nothing
billed, and the next request is served by the same miners without waiting for the abandoned one."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.instant import WORDS, InstantEngine
from tests.conftest import API_KEY, Network

H = {"authorization": f"Bearer {API_KEY}"}
BODY = {"model": "instant-echo", "messages": [{"role": "user", "content": "talk"}], "max_tokens": 400}
MODES = {
    "none-k2": SessionDefaults(redundancy=2, quorum=1, mode="none"),
    "token": SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1),
}


def slow() -> InstantEngine:
    return InstantEngine(capacity=1, tokens=400, token_delay_s=0.02)


@pytest.fixture(params=sorted(MODES))
def net(request: pytest.FixtureRequest, network: Network) -> Network:
    network.start_router(defaults=MODES[request.param])
    network.add_miner("a", engine_obj=slow())
    network.add_miner("b", engine_obj=slow())
    return network


def busy(net: Network) -> int:
    return sum(len(agent.jobs) for agent in net.agents.values())


def wait_idle(net: Network, within: float) -> float:
    """Seconds until no miner has a job left (fails after ``within``)."""

    async def idle() -> float:
        t0 = time.monotonic()
        while busy(net):  # noqa: ASYNC110 - the agents have no event for this
            await asyncio.sleep(0.01)
        return time.monotonic() - t0

    return net.lt.run(asyncio.wait_for(idle(), within))


def wait_record(net: Network, task_id: str) -> dict[str, Any]:
    async def failed() -> dict[str, Any]:
        while True:
            row = await net.service.store.get_task(task_id)
            if row is not None and row["phase"] == "failed":
                return dict(row)
            await asyncio.sleep(0.02)

    return net.lt.run(asyncio.wait_for(failed(), 10))


def served_quickly(net: Network) -> float:
    t0 = time.monotonic()
    r = httpx.post(net.base_url + "/chat/completions", json={**BODY, "max_tokens": 5}, headers=H, timeout=30)
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


def test_stream_disconnect_cancels_every_miner(net: Network) -> None:
    url, body = net.base_url + "/chat/completions", {**BODY, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body, headers=H) as r:
        assert r.status_code == 200
        task_id = r.headers["x-hivemesh-task-id"]
        lines = r.iter_lines()
        while not any(w in next(lines) for w in WORDS):  # the first token has arrived
            pass
        assert busy(net) >= 1  # generating when the client hangs up
    assert wait_idle(net, within=3) < 3
    row = wait_record(net, task_id)
    assert row["error"] == "client disconnected"
    assert served_quickly(net) < 3  # nothing left generating the abandoned answer (it would take ~8 s)


def test_non_streaming_disconnect_cancels_every_miner(net: Network) -> None:
    got: dict[str, Any] = {}
    started = threading.Event()

    def call() -> None:
        with httpx.Client(timeout=0.6) as http:
            started.set()
            try:
                http.post(net.base_url + "/chat/completions", json=BODY, headers=H)
            except httpx.TimeoutException as exc:  # the client gives up and closes the connection
                got["gave_up"] = exc

    t = threading.Thread(target=call)
    t.start()
    started.wait(5)
    t.join(10)
    assert "gave_up" in got
    assert wait_idle(net, within=3) < 3
    task_ids = list(net.lt.run(_task_ids(net)))
    assert len(task_ids) == 1
    row = wait_record(net, task_ids[0])
    assert row["error"] == "client disconnected"
    assert served_quickly(net) < 3


async def _task_ids(net: Network) -> list[str]:
    from sqlalchemy import select

    from hivemesh.store import schema as s

    rows = await net.service.store.fetch_all(select(s.tasks.c.id))
    return [r["id"] for r in rows]
