"""Fixtures for the ledger integration tests: a real PostgreSQL server for the session, a fresh database per test.

``pg_server`` is the server's base URL: ``HIVEMESH_TEST_PG_URL`` if set (a server where this user may CREATE
DATABASE), else a throwaway server started from Debian's binaries (see ``ledger_pgserver.py``), else the
PostgreSQL tests are skipped with the reason. ``ledger_url`` is parametrised over both back-ends, so each test
runs on SQLite and, marked ``postgres``, on PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from .ledger_pgserver import INSTALL_HINT, PgServer, PgUnavailable

PG_URL_ENV = "HIVEMESH_TEST_PG_URL"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    if os.environ.get(PG_URL_ENV):
        yield os.environ[PG_URL_ENV]
        return
    try:
        with PgServer.start() as server:
            yield server.url
    except PgUnavailable as e:
        pytest.skip(f"PostgreSQL tests need a server: {e}. Install it ({INSTALL_HINT}) or set {PG_URL_ENV}.")


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ledger URL on each back-end: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_database"))
