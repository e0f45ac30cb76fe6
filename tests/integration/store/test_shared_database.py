"""The router's store and the ledger on one database URL (``--database-url`` = ``--ledger-url``).

The store's ``sessions`` (session settings, keyed ``id``) and the ledger's ``ledger_sessions`` (escrow state,
keyed ``session_id``) live side by side; a ledger made before the rename has its rows moved by migration 3.
Several routers opening both at once: ``test_migrations_concurrent.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from hivemesh.ledger import Ledger
from hivemesh.ledger import schema as ls
from hivemesh.store import schema as s
from hivemesh.store.db import Store

OWNER = "0x" + "11" * 20


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'one.db'}"
    return str(request.getfixturevalue("pg_database"))


def _session_row(session_id: str) -> dict[str, object]:
    return dict(
        id=session_id, owner=OWNER, name="", model=None, redundancy=3, quorum=2, mode="majority",
        threshold=0.9, ack_timeout_ms=1, precommit_timeout_ms=1, commit_timeout_ms=1, max_tokens=1,
        sla="basic", verifiers=1, meta={}, active=True, is_default=False, created_at=time.time(),
    )  # fmt: skip


@pytest.mark.parametrize("ledger_first", [False, True])
async def test_store_and_ledger_share_one_database(db_url: str, ledger_first: bool) -> None:
    if ledger_first:
        ledger = await Ledger.open(db_url)
        store = await Store.open(db_url)
    else:
        store = await Store.open(db_url)
        ledger = await Ledger.open(db_url)
    try:
        await store.write(insert(s.sessions).values(**_session_row("s1")))
        await ledger.deposit(OWNER, 100)
        await ledger.fund_session("s1", OWNER, 10)
        task = "t1"
        await ledger.reserve("s1", task, 4)
        await ledger.settle(task, {OWNER: 4})
        assert await ledger.escrow_balance("s1") == 6
        assert (await store.fetch_one(select(s.sessions.c.owner).where(s.sessions.c.id == "s1"))) == {
            "owner": OWNER
        }
        assert await ledger.close_session("s1", OWNER) == 6
        assert await ledger.balance(OWNER) == 100
    finally:
        await ledger.close()
        await store.close()


async def test_a_ledger_made_before_the_rename_keeps_its_sessions(db_url: str) -> None:
    """Migration 3 moves the ledger's rows from ``sessions`` to ``ledger_sessions``; the store then has the name."""
    ledger = await Ledger.open(db_url)
    try:
        await ledger.deposit(OWNER, 50)
        await ledger.fund_session("old", OWNER, 20)
    finally:
        await ledger.close()
    ledger = await Ledger.open(db_url)  # put the database back as version 2 left it
    try:
        async with ledger._db.write() as conn:
            await conn.execute(text("ALTER TABLE ledger_sessions RENAME TO sessions"))
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("ALTER TABLE sessions RENAME CONSTRAINT ledger_sessions_pkey TO sessions_pkey")
                )
            await conn.execute(ls.migrations_table.delete().where(ls.migrations_table.c.version == 3))
    finally:
        await ledger.close()

    ledger = await Ledger.open(db_url)
    store = await Store.open(db_url)
    try:
        await store.write(insert(s.sessions).values(**_session_row("new")))
        assert await ledger.escrow_balance("old") == 20
        await ledger.reserve("old", "t-old", 5)  # the moved row: the session is open
        await ledger.release("t-old")
        assert await ledger.close_session("old", OWNER) == 20
        assert await ledger.balance(OWNER) == 50
    finally:
        await ledger.close()
        await store.close()
