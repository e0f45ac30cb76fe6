"""The router's persistence: SQLAlchemy 2 (SQLite by default, asyncpg for PostgreSQL).

Writes go through a group-commit writer: callers hand in statements and (when the write must be durable before
it takes effect) await them; one background task drains everything pending into a single transaction. Under load
many tasks' transitions share one commit, so durability costs one fsync per batch, not per transition.

On SQLite the batch runs as one synchronous transaction on the writer's own thread (one hop off the event loop
per batch instead of one per statement, which is what aiosqlite costs); reads use the async engine. On PostgreSQL
both go through asyncpg.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import create_engine, event, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import Executable

from hivemesh.store import schema as s

log = logging.getLogger(__name__)

Row = dict[str, Any]


Pending = list[tuple[Executable, Any, "asyncio.Future[None] | None"]]


class Store:
    def __init__(self, engine: AsyncEngine, sync_engine: Engine | None = None) -> None:
        self.engine = engine
        self.sync_engine = sync_engine  # SQLite: the writer thread's own engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer") if sync_engine else None
        self._pending: list[tuple[Executable, Any, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(cls, url: str) -> Store:
        engine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        sync_engine = None
        if url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _pragmas)
            sync_engine = create_engine(url.replace("+aiosqlite", ""), poolclass=StaticPool)
            event.listen(sync_engine, "connect", _pragmas)
        store = cls(engine, sync_engine)
        try:
            if sync_engine is not None:
                await asyncio.to_thread(_migrate_sqlite, url.replace("+aiosqlite", ""))
            else:
                async with engine.begin() as conn:
                    await conn.run_sync(_migrate)
        except BaseException:
            await store.close()
            raise
        store._writer = asyncio.create_task(store._write_loop(), name="store-writer")
        return store

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._thread is not None and self.sync_engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.sync_engine.dispose)
            self._thread.shutdown(wait=True)
        await self.engine.dispose()

    # ------------------------------------------------------------------ writes

    def submit(self, stmt: Executable, params: Any = None) -> asyncio.Future[None]:
        """Queue a write; the returned future resolves once it is committed. Not awaiting it is fine
        for writes nothing depends on (events, counters)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((stmt, params, fut))
        self._wake.set()
        return fut

    async def write(self, *stmts: Executable | tuple[Executable, Any]) -> None:
        """Write durably: returns once every statement is committed."""
        futs = [self.submit(*(st if isinstance(st, tuple) else (st, None))) for st in stmts]
        await asyncio.gather(*futs)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await self._commit(batch)
                except Exception:
                    # one bad statement must not take the others down: redo them one transaction each
                    log.warning("store batch failed, retrying its %d statements one by one", len(batch))
                    for item in batch:
                        try:
                            await self._commit([item])
                        except Exception as exc:
                            log.warning("store write failed error=%s", str(exc).splitlines()[0][:300])
                            _resolve([item], exc)
                        else:
                            _resolve([item], None)
                else:
                    _resolve(batch, None)
            if self._closing and not self._pending:
                return

    async def _commit(self, batch: Pending) -> None:
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._commit_sync, batch)
            return
        async with self.engine.begin() as conn:
            for stmt, params, _ in batch:
                await conn.execute(stmt, params) if params is not None else await conn.execute(stmt)

    def _commit_sync(self, batch: Pending) -> None:
        assert self.sync_engine is not None
        with self.sync_engine.begin() as conn:
            for stmt, params, _ in batch:
                conn.execute(stmt, params) if params is not None else conn.execute(stmt)

    # ------------------------------------------------------------------ reads

    async def fetch_all(self, stmt: Executable) -> list[Row]:
        async with self.engine.connect() as conn:
            res = await conn.execute(stmt)
            return [dict(r._mapping) for r in res]

    async def fetch_scalars(self, stmt: Executable) -> list[Any]:
        """The first column of every row (no dict per row: for long lists of ids)."""
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).scalars().all())

    async def fetch_one(self, stmt: Executable) -> Row | None:
        rows = await self.fetch_all(stmt)
        return rows[0] if rows else None

    # ------------------------------------------------------------------ domain helpers

    async def get_task(self, task_id: str) -> Row | None:
        return await self.fetch_one(select(s.tasks).where(s.tasks.c.id == task_id))

    async def task_events(self, task_id: str) -> list[Row]:
        return await self.fetch_all(
            select(s.task_events).where(s.task_events.c.task_id == task_id).order_by(s.task_events.c.id)
        )

    async def task_assignments(self, task_id: str) -> list[Row]:
        return await self.fetch_all(
            select(s.assignments).where(s.assignments.c.task_id == task_id).order_by(s.assignments.c.slot)
        )

    async def unfinished_tasks(self) -> list[Row]:
        return await self.fetch_all(
            select(s.tasks)
            .where(s.tasks.c.phase.notin_(("ended", "failed", "validated")))
            .order_by(s.tasks.c.created_at)
        )

    async def upsert_node(self, address: str, values: Row) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(s.nodes).where(s.nodes.c.address == address).values(last_seen=now, **values)
            )
            if res.rowcount == 0:
                await conn.execute(
                    insert(s.nodes).values(address=address, first_seen=now, last_seen=now, **values)
                )

    def node_event(self, node: str, kind: str, task_id: str | None = None, detail: str = "") -> None:
        self.submit(
            insert(s.node_events).values(
                node=node, ts=time.time(), kind=kind, task_id=task_id, detail=detail[:2000]
            )
        )

    async def node_events(
        self, node: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Row]:
        q = select(s.node_events).order_by(s.node_events.c.id.desc()).limit(limit)
        if node:
            q = q.where(s.node_events.c.node == node)
        if kind:
            q = q.where(s.node_events.c.kind == kind)
        return await self.fetch_all(q)


def _resolve(batch: Pending, exc: BaseException | None) -> None:
    for _, _, fut in batch:
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")  # first: switching to WAL waits for another process's lock too
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


_PG_MIGRATION_LOCK = 0x68_6D_73_74  # "hmst": pg_advisory_xact_lock key serialising concurrent Store.open


def _migrate_sqlite(url: str) -> list[str]:
    """Migrate a SQLite database inside ``BEGIN IMMEDIATE``: the write lock is taken before ``_migrations`` is
    read, so a router starting at the same moment waits (busy_timeout) and then finds the work done."""
    engine = create_engine(url, poolclass=StaticPool, isolation_level="AUTOCOMMIT")
    event.listen(engine, "connect", _pragmas)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                applied = _migrate(conn)
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
            return applied
    finally:
        engine.dispose()


def _migrate(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded in ``_migrations``, in order, inside the caller's transaction;
    return those applied. The caller holds the database's write lock (SQLite) or, taken here, an advisory lock
    (PostgreSQL), so of several routers starting at once one migrates and the others find nothing to do."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    conn.execute(
        text("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR(200) PRIMARY KEY, applied_at FLOAT)")
    )
    done = {r[0] for r in conn.execute(text("SELECT name FROM _migrations"))}
    applied = []
    for name, fn in s.MIGRATIONS:
        if name in done:
            continue
        fn(conn)
        conn.execute(
            text("INSERT INTO _migrations (name, applied_at) VALUES (:n, :t)"), {"n": name, "t": time.time()}
        )
        applied.append(name)
        log.info("migration applied name=%s", name)
    return applied
