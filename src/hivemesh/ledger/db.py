"""The database seam: one async engine, a write transaction and a read transaction, on SQLite or PostgreSQL.

SQLite (``sqlite+aiosqlite:///path``): WAL (set once per file at open), ``busy_timeout``, and writes that start with ``BEGIN IMMEDIATE`` so
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

from sqlalchemy import ColumnElement, Table, event
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
        self._inserts: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._lock: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 30_000) -> Database:
        scheme = url.split(":", 1)[0]
        if scheme not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise LedgerError(
                f"unsupported ledger URL scheme {scheme!r}: use sqlite+aiosqlite or postgresql+asyncpg"
            )
        try:
            if scheme == "sqlite+aiosqlite":
                if ":memory:" in url or url.rstrip("/") == "sqlite+aiosqlite:":
                    raise LedgerError("the ledger needs a SQLite file (WAL), not an in-memory database")
                engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
                _configure_sqlite(engine, busy_timeout_ms)
            else:
                engine = create_async_engine(
                    url,
                    pool_size=pool_size,
                    max_overflow=pool_size,
                    pool_timeout=30,
                    connect_args={"timeout": 10, "command_timeout": 60},
                )
        except ArgumentError as e:
            raise LedgerError(f"bad ledger URL: {e}") from e
        db = cls(engine)
        if db.dialect == "sqlite":
            try:
                async with asyncio.timeout(busy_timeout_ms / 1000):
                    await db._enable_wal()
            except TimeoutError:
                await db.close()
                raise LedgerError("the ledger database stayed locked by another process; try again") from None
            except BaseException:
                await db.close()
                raise
        return db

    async def _enable_wal(self) -> None:
        """Switch the file to WAL (persistent, so once per file). Changing the journal mode ignores
        ``busy_timeout``, so a process opening the file at the same moment as another retries here."""
        delay = 0.001
        while True:
            try:
                async with self.engine.connect() as conn:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode = WAL")).scalar()
                if str(mode).lower() != "wal":
                    raise LedgerError(
                        f"SQLite refused WAL mode (journal_mode is {mode!r}); is this a local file?"
                    )
                return
            except OperationalError as e:
                if "locked" not in str(e.orig):
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

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

    def insert_ignore(self, table: Table, *returning: ColumnElement[Any]) -> Any:
        """``INSERT ... ON CONFLICT (primary key) DO NOTHING [RETURNING ...]``, built once per shape.

        Execute it with the row(s) as parameters; it returns only the rows it inserted."""
        key = (table.name, tuple(str(c) for c in returning))
        stmt = self._inserts.get(key)
        if stmt is None:
            stmt = self.insert(table).on_conflict_do_nothing(index_elements=list(table.primary_key.columns))
            if returning:
                stmt = stmt.returning(*returning)
            self._inserts[key] = stmt
        return stmt

    async def close(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous = FULL")  # money: a commit survives power loss, not only a crash
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_MODE)
        if mode is not None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
