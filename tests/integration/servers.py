"""Real servers for the integration tests, shared by every directory under ``tests/integration``.

- ``pg_server`` (session): a PostgreSQL base URL: ``HIVEMESH_TEST_PG_URL`` if set (a server where this user may
  CREATE DATABASE), else a throwaway server started from Debian's binaries (``hivemesh.cluster.PgServer``), else
  the PostgreSQL tests are skipped with the reason. ``pg_database``: a fresh database on it per test.
- ``redis_server`` (session): a private ``redis-server`` on a loopback port (``hivemesh.cluster.RedisServer``),
  or ``HIVEMESH_TEST_REDIS_URL`` if set, else the broker tests are skipped with the reason. ``redis_url``: that
  server, flushed before the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from hivemesh.cluster.postgres_server import INSTALL_HINT as PG_HINT
from hivemesh.cluster.postgres_server import PgServer, PgUnavailable
from hivemesh.cluster.redis_server import INSTALL_HINT as REDIS_HINT
from hivemesh.cluster.redis_server import BrokerUnavailable, RedisServer

PG_URL_ENV = "HIVEMESH_TEST_PG_URL"
REDIS_URL_ENV = "HIVEMESH_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    if os.environ.get(PG_URL_ENV):
        yield os.environ[PG_URL_ENV]
        return
    try:
        with PgServer.start() as server:
            yield server.url
    except PgUnavailable as e:
        pytest.skip(f"PostgreSQL tests need a server: {e}. Install it ({PG_HINT}) or set {PG_URL_ENV}.")


def _dsn(url: str, database: str | None = None) -> str:
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


async def _admin(sql: str, server: str) -> None:
    conn = await asyncpg.connect(_dsn(server), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def pg_database(pg_server: str) -> AsyncIterator[str]:
    """A new, empty database on the session's server; dropped after the test."""
    name = f"hm_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"', pg_server)
    try:
        yield (
            make_url(pg_server)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', pg_server)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    if os.environ.get(REDIS_URL_ENV):
        yield os.environ[REDIS_URL_ENV]
        return
    try:
        with RedisServer.running() as server:
            yield server.url
    except BrokerUnavailable as e:
        pytest.skip(f"broker tests need Redis: {e}. Install it ({REDIS_HINT}) or set {REDIS_URL_ENV}.")


@pytest.fixture
async def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied (``FLUSHDB``) so each test starts from nothing."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_server)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return redis_server
