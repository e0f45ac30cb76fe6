"""The database seam: one async engine, a write transaction and a read transaction, on SQLite or PostgreSQL.

SQLite (``sqlite+aiosqlite:///path``): WAL (set once per file at open), ``busy_timeout``, and writes that start with ``BEGIN IMMEDIATE`` so
a transaction holds the write lock from its first statement (no lock upgrades, no mid-transaction
SQLITE_BUSY). Writers of one process also queue on an ``asyncio.Lock`` first, so they wait without spinning
on the busy handler; the file lock still serialises other processes. Reads and ``write`` run their sqlite3
calls on aiosqlite's thread. The money path's transactions (``transaction``) run on one dedicated sqlite3
connection instead: ``BEGIN IMMEDIATE`` (which may wait on another process's lock) and ``COMMIT`` (the
fsync) on the ledger's own writer thread, the statements in between inline, because once this connection
holds the write lock each statement is a few tens of microseconds of local work: a thread hop per statement
(aiosqlite) cost more CPU than the statement itself.

PostgreSQL (``postgresql+asyncpg://``): READ COMMITTED; callers take row locks with ``SELECT ... FOR UPDATE``
in a fixed order (see ``book.py``), so writers only wait on each other when they touch the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from hivemesh.errors import LedgerError

_MODE = "hivemesh_mode"  # execution option read by the SQLite BEGIN hook: write | snapshot | (none)


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(**{_MODE: "write"})
        self._snapshot = engine.execution_options(**{_MODE: "snapshot"})
        self._inserts: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._driver_sql: dict[str, str] = {}
        self._lock: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None
        self._inline: Connection | None = (
            None  # SQLite: the money path's own connection (see ``transaction``)
        )
        self._inline_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None

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
            db._open_inline(url.replace("+aiosqlite", "", 1), busy_timeout_ms)
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

    def _open_inline(self, url: str, busy_timeout_ms: int) -> None:
        sync = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        _configure_sqlite_sync(sync, busy_timeout_ms)
        self._inline_engine = sync.execution_options(**{_MODE: "write"})
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """One write transaction for the money path: like ``write``; on SQLite on the inline connection.

        The connection it yields has an async ``execute`` and ``exec_driver_sql``; nothing else of
        AsyncConnection may be used."""
        if self._thread is None or self._inline_engine is None:
            async with self.write() as async_conn:
                yield async_conn
            return
        assert self._lock is not None
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._inline is None:
                self._inline = await loop.run_in_executor(self._thread, self._inline_engine.connect)
            inline = self._inline
            try:
                trans = await loop.run_in_executor(self._thread, inline.begin)
            except OperationalError as e:
                raise _busy(e) from e
            try:
                yield _InlineConnection(inline)
            except BaseException:
                await asyncio.shield(loop.run_in_executor(self._thread, trans.rollback))
                raise
            try:
                await asyncio.shield(loop.run_in_executor(self._thread, trans.commit))
            except OperationalError as e:
                raise _busy(e) from e

    @contextlib.asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read-only connection; ``snapshot`` gives every statement the same view of the data.

        Without it, on SQLite each statement reads on its own (no BEGIN: one thread hop fewer per read)."""
        async with (self._snapshot if snapshot else self.engine).connect() as conn:
            if snapshot and self.dialect == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn

    def driver_sql(self, sql: str) -> str:
        """SQL written with ``?`` placeholders, in this dialect's driver paramstyle (``$n`` for asyncpg); for
        ``exec_driver_sql``, which the bulk writes of the money path use: no per-row statement compilation."""
        out = self._driver_sql.get(sql)
        if out is None:
            if self.dialect == "postgresql":
                parts = sql.split("?")
                out = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], start=1))
            else:
                out = sql
            self._driver_sql[sql] = out
        return out

    def amount(self, value: int) -> str | Decimal:
        """An amount as the driver stores it (see ``schema.Amount``): decimal text on SQLite."""
        return str(value) if self.dialect == "sqlite" else Decimal(value)

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
        if self._thread is not None:
            loop = asyncio.get_running_loop()
            inline = self._inline
            if inline is not None:
                await loop.run_in_executor(self._thread, inline.close)
            if self._inline_engine is not None:
                await loop.run_in_executor(self._thread, self._inline_engine.dispose)
            self._thread.shutdown(wait=True)
            self._thread = None
        await self.engine.dispose()


class _InlineConnection:
    """The ledger's SQLite write connection, seen as the ``execute`` of an AsyncConnection (runs inline)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        try:
            return self._conn.execute(statement, parameters)
        except OperationalError as e:
            raise _busy(e) from e

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        try:
            return self._conn.exec_driver_sql(statement, parameters)
        except OperationalError as e:
            raise _busy(e) from e


def _busy(e: OperationalError) -> Exception:
    if "locked" in str(e.orig):
        return LedgerError("the ledger database is busy (locked by another process); try again")
    return e


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    _configure_sqlite_sync(engine.sync_engine, busy_timeout_ms)


def _configure_sqlite_sync(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous = FULL")  # money: a commit survives power loss, not only a crash
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_MODE)
        if mode is not None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
