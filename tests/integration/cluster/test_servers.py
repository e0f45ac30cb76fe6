"""The private servers: ``RedisServer`` starts Debian's ``redis-server`` on loopback, answers, and stops cleanly;
a missing binary is one clear sentence."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from hivemesh.cluster import redis_server as rs
from hivemesh.cluster.postgres_server import INSTALL_HINT as PG_HINT
from hivemesh.cluster.postgres_server import PgServer, PgUnavailable, find_bindir
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


@pytest.mark.postgres
def test_a_postgres_server_in_a_data_dir_keeps_its_data_across_restarts() -> None:
    """As ``up`` runs it: initdb the first time only, the data still there after a restart."""
    if find_bindir() is None:
        pytest.skip(f"no PostgreSQL binaries ({PG_HINT})")

    async def sql(port: int, *queries: str) -> object:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        try:
            for q in queries[:-1]:
                await conn.execute(q)
            return await conn.fetchval(queries[-1])
        finally:
            await conn.close()

    parent = Path(tempfile.mkdtemp(prefix="hm-pg-test-"))  # /tmp: reachable by the postgres user when root
    try:
        parent.chmod(0o755)
        root = parent / "postgres"
        with PgServer.start(root) as server:
            asyncio.run(
                sql(server.port, "CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (7)", "SELECT 1")
            )
        with PgServer.start(root) as server:  # the same directory: no initdb, the table is there
            assert asyncio.run(sql(server.port, "SELECT x FROM kept")) == 7
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_as_root_a_data_dir_the_postgres_user_cannot_reach_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0 or find_bindir() is None:
        pytest.skip("only as root with PostgreSQL's binaries")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(PgUnavailable, match="cannot reach"):
        PgServer.launch(closed / "postgres")
