"""The database seam: one async engine, a write transaction and a read transaction, on SQLite or PostgreSQL.

SQLite (``sqlite+aiosqlite:///path``): WAL, ``busy_timeout``, and writes that start with ``BEGIN IMMEDIATE`` so
a transaction holds the write lock from its first statement (no lock upgrades, no mid-transaction
SQLITE_BUSY). Writers of one process also queue on an ``asyncio.Lock`` first, so they wait without spinning
on the busy handler; the file lock still serialises other processes. The sqlite3 calls run on aiosqlite's
thread, never on the event loop.

PostgreSQL (``postgresql+asyncpg://``): READ COMMITTED; callers take row locks with ``SELECT ... FOR UPDATE``
in a fixed order (see ``book.py``), so writers only wait on each other when they touch the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from hivemesh.errors import LedgerError

_MODE = "hivemesh_mode"  # execution option read by the SQLite BEGIN hook: write | snapshot | (none)


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(**{_MODE: "write"})
        self._snapshot = engine.execution_options(**{_MODE: "snapshot"})
        self._lock: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 30_000) -> Database:
        try:
            if url.startswith("sqlite"):
                if ":memory:" in url or url.rstrip("/") in ("sqlite+aiosqlite:", "sqlite:"):
                    raise LedgerError("the ledger needs a SQLite file (WAL), not an in-memory database")
                engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
                _configure_sqlite(engine, busy_timeout_ms)
            elif url.startswith("postgresql"):
                engine = create_async_engine(
                    url,
                    pool_size=pool_size,
                    max_overflow=pool_size,
                    pool_timeout=30,
                    connect_args={"timeout": 10, "command_timeout": 60},
                )
            else:
                raise LedgerError(
                    f"unsupported ledger URL {url.split(':', 1)[0]!r}: use sqlite+aiosqlite or postgresql+asyncpg"
                )
        except ArgumentError as e:
            raise LedgerError(f"bad ledger URL: {e}") from e
        return cls(engine)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back on any exception."""
        lock = self._lock if self._lock is not None else contextlib.nullcontext()
        async with lock:
            try:
                async with self._writer.begin() as conn:
                    yield conn
            except OperationalError as e:
                if self.dialect == "sqlite" and "locked" in str(e.orig):
                    raise LedgerError(
                        "the ledger database is busy (locked by another process); try again"
                    ) from e
                raise

    @contextlib.asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read-only connection; ``snapshot`` gives every statement the same view of the data.

        Without it, on SQLite each statement reads on its own (no BEGIN: one thread hop fewer per read)."""
        async with (self._snapshot if snapshot else self.engine).connect() as conn:
            if snapshot and self.dialect == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn

    def insert(self, table: Table) -> Any:
        """An INSERT that supports ``.on_conflict_do_nothing()`` on either dialect."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    async def close(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")  # money: a commit survives power loss, not only a crash
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_MODE)
        if mode is not None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
