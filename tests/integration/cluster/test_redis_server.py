"""The private broker: ``RedisServer`` starts Debian's ``redis-server`` on loopback, answers, and stops cleanly;
a missing binary is one clear sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from hivemesh.cluster import redis_server as rs
from hivemesh.cluster.redis_server import BrokerUnavailable, RedisServer


async def test_the_fixture_server_takes_commands(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.incr("hm:test") == 1
        assert await client.incr("hm:test") == 2
    finally:
        await client.aclose()


def test_a_server_in_a_data_dir_starts_and_stops(tmp_path: Path) -> None:
    if rs.find_redis_server() is None:
        pytest.skip(f"no redis-server ({rs.INSTALL_HINT})")
    with RedisServer.running(tmp_path / "redis") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert rs.ping(server.port)
        assert (tmp_path / "redis" / "redis.log").exists()
    assert not server.running_now()
    assert not rs.ping(server.port)
    assert (tmp_path / "redis").is_dir()  # the caller's data dir is kept


def test_a_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rs, "find_redis_server", lambda: None)
    with pytest.raises(BrokerUnavailable, match=r"no redis-server binary found; install it: apt-get"):
        RedisServer.launch()
