"""``Broker``: pub/sub between routers, and what happens when Redis goes away and comes back (the subscription is
renewed and ``on_gap`` runs, so caches that rely on messages drop what they may have missed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from hivemesh.cluster.broker import Broker, BrokerError
from hivemesh.cluster.redis_server import RedisServer, free_port


async def _until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not cond():  # noqa: ASYNC110 - a condition on the listener's state, which has no event for it
            await asyncio.sleep(0.01)


async def test_a_message_reaches_every_subscriber(redis_url: str) -> None:
    a, b = await Broker.connect(redis_url), await Broker.connect(redis_url)
    got: list[bytes] = []
    try:
        b.subscribe("sessions", got.append)
        await asyncio.wait_for(b.subscribed.wait(), 5)
        await a.publish("sessions", "ses_1")
        await _until(lambda: got == [b"ses_1"])
    finally:
        await a.close()
        await b.close()


async def test_after_an_outage_the_subscription_comes_back_and_the_gap_is_reported(tmp_path: Path) -> None:
    port = free_port()
    server = await asyncio.to_thread(RedisServer.launch, tmp_path / "r", port=port)
    broker = await Broker.connect(server.url)
    got: list[bytes] = []
    gaps: list[int] = []
    try:
        broker.subscribe("sessions", got.append)
        broker.on_gap.append(lambda: gaps.append(1))
        await asyncio.wait_for(broker.subscribed.wait(), 5)
        await asyncio.to_thread(server.stop)
        await _until(lambda: not broker.subscribed.is_set())
        server = await asyncio.to_thread(RedisServer.launch, tmp_path / "r", port=port)
        await asyncio.wait_for(broker.subscribed.wait(), 10)
        assert gaps == [1]
        await broker.publish("sessions", "ses_2")
        await _until(lambda: got == [b"ses_2"])
    finally:
        await broker.close()
        await asyncio.to_thread(server.stop)


async def test_an_unreachable_broker_is_one_sentence() -> None:
    with pytest.raises(BrokerError, match=r"cannot reach the cluster's broker at redis://127.0.0.1:1/0"):
        await Broker.connect("redis://127.0.0.1:1/0", timeout_s=1)
