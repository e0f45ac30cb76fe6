"""Tables of the ledger and their ordered, recorded migrations.

Amounts are exact integers: ``NUMERIC(78,0)`` on PostgreSQL. SQLite's NUMERIC affinity would turn anything
above 2**63 into a lossy REAL, so there amounts are stored as canonical decimal TEXT and every sum is done in
Python. Non-negative balances are enforced by a CHECK on both (a text test on SQLite).

Migrations are a list of ``(version, name, function)`` applied in order inside one transaction that holds the
database's write lock (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), each recorded in
``ledger_migrations`` so a version never runs twice. Never edit a released migration; append a new one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator, TypeEngine

from hivemesh.ledger.accounts import WORLD, EntryKind


class Amount(TypeDecorator[int]):
    """An exact integer amount: NUMERIC(78,0) where the database has it, decimal TEXT on SQLite."""

    impl = Numeric(78, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(80))
        return dialect.type_descriptor(Numeric(78, 0))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"amounts are ints, got {type(value).__name__}")
        return str(value) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


Id = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid alias
Ts = BigInteger  # microseconds since the Unix epoch, UTC: exact, so hashes recompute identically everywhere

metadata = MetaData()
_kinds = ", ".join(f"'{k.value}'" for k in EntryKind)

migrations_table = Table(
    "ledger_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_us", Ts, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("address", String(255), primary_key=True),
    Column("balance", Amount, nullable=False),
    Column("earned", Amount, nullable=False),  # lifetime payouts + rewards received (for AccountView)
    CheckConstraint(f"address = '{WORLD}' OR balance >= 0", name="ck_accounts_nonneg_pg").ddl_if(
        dialect="postgresql"
    ),
    CheckConstraint(
        f"address = '{WORLD}' OR substr(balance, 1, 1) <> '-'", name="ck_accounts_nonneg_sqlite"
    ).ddl_if(dialect="sqlite"),
)

entries = Table(
    "entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("shard", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts_us", Ts, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("session_id", String(200)),
    Column("task_id", String(200)),
    Column("node", String(64)),
    Column("epoch", BigInteger),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("shard", "seq", name="uq_entries_shard_seq"),
    CheckConstraint(f"kind IN ({_kinds})", name="ck_entries_kind"),
)
Index("ix_entries_task", entries.c.task_id)
Index("ix_entries_session", entries.c.session_id)

postings = Table(
    "postings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("entry_id", Id, ForeignKey("entries.id"), nullable=False),
    Column("account", String(255), ForeignKey("accounts.address"), nullable=False),
    Column("delta", Amount, nullable=False),
)
Index("ix_postings_entry", postings.c.entry_id)
Index("ix_postings_account", postings.c.account)

chain_heads = Table(
    "chain_heads",
    metadata,
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("last_entry_id", BigInteger),
)

sessions = Table(
    "ledger_sessions",  # v3: was "sessions", a name the router's store uses too (one database may hold both)
    metadata,
    Column("session_id", String(200), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("state", String(8), nullable=False),  # open | closed
    Column("created_us", Ts, nullable=False),
    Column("closed_us", Ts),
)

holds = Table(
    "holds",
    metadata,
    Column("task_id", String(200), primary_key=True),
    Column("session_id", String(200), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("state", String(10), nullable=False),  # held | settled | released
    Column("fee", Amount),
    Column("released", Amount),
    Column("payouts", Text),  # JSON {account: "amount"} of a settlement, sorted keys
    Column("created_us", Ts, nullable=False),
    Column("closed_us", Ts),
    Column("key_id", String(40)),  # v2: the API key whose budget the hold counts against (budgeted keys only)
)
Index("ix_holds_session_state", holds.c.session_id, holds.c.state)

stakes = Table(
    "stakes",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("pool", Integer, nullable=False),
    Column("unstake_available_us", Ts),  # when the stake in unstaking:<node> may be withdrawn
)

rewards = Table(
    "rewards",
    metadata,
    Column("account", String(255), primary_key=True),
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("amount", Amount, nullable=False),
    Column("entry_id", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("account", String(255), nullable=False),
    Column("name", String(200), nullable=False),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("created_us", Ts, nullable=False),
    Column("expires_us", Ts),
    Column("revoked_us", Ts),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget", Amount),
    Column("spent", Amount, nullable=False, server_default="0"),  # v2: held + charged against the budget
)
Index("ix_api_keys_account", api_keys.c.account)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


async def _m001_initial(conn: AsyncConnection) -> None:
    v1 = [accounts, entries, postings, chain_heads, sessions, holds, stakes, rewards, api_keys]
    await conn.run_sync(lambda sync: metadata.create_all(sync, tables=v1))


_M002_COLUMNS = {
    # table -> (column, its DDL per dialect)
    "holds": ("key_id", {"sqlite": "VARCHAR(40)", "postgresql": "VARCHAR(40)"}),
    "api_keys": (
        "spent",
        {"sqlite": "VARCHAR(80) NOT NULL DEFAULT '0'", "postgresql": "NUMERIC(78, 0) NOT NULL DEFAULT 0"},
    ),
}


async def _m002_key_budgets(conn: AsyncConnection) -> None:
    """Key budgets: ``holds.key_id`` and ``api_keys.spent``. Migration 1 creates tables from the current
    metadata, so a database created by this version has the columns already: add only those missing."""

    def missing(sync: Any) -> list[tuple[str, str]]:
        have = {t: {c["name"] for c in inspect(sync).get_columns(t)} for t in _M002_COLUMNS}
        return [(t, col) for t, (col, _) in _M002_COLUMNS.items() if col not in have[t]]

    for table, column in await conn.run_sync(missing):
        ddl = _M002_COLUMNS[table][1][conn.dialect.name]
        await conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


async def _m003_ledger_sessions(conn: AsyncConnection) -> None:
    """The ledger's session table is ``ledger_sessions``: ``sessions`` is the router store's, and one database may
    hold both (``--database-url`` = ``--ledger-url``). A ledger made before this version has its rows in
    ``sessions`` (keyed ``session_id``): the table is renamed, rows and all. Migration 1 creates tables from the
    current metadata, so a database created by this version has ``ledger_sessions`` already; one whose ledger
    found the store's ``sessions`` in its place (it then had no table of its own) gets it created here."""

    def tables(sync: Any) -> tuple[bool, set[str] | None]:
        insp = inspect(sync)
        names = set(insp.get_table_names())
        old = {c["name"] for c in insp.get_columns("sessions")} if "sessions" in names else None
        return "ledger_sessions" in names, old

    have_new, old_columns = await conn.run_sync(tables)
    if have_new:
        return
    if old_columns is not None and {"session_id", "state"} <= old_columns and "id" not in old_columns:
        await conn.execute(text("ALTER TABLE sessions RENAME TO ledger_sessions"))
        if conn.dialect.name == "postgresql":  # the key's index keeps its name: free it for the store's table
            named = await conn.execute(
                text(
                    "SELECT 1 FROM pg_constraint WHERE conname = 'sessions_pkey' AND conrelid = 'ledger_sessions'::regclass"
                )
            )
            if named.first() is not None:
                await conn.execute(
                    text(
                        "ALTER TABLE ledger_sessions RENAME CONSTRAINT sessions_pkey TO ledger_sessions_pkey"
                    )
                )
        return
    await conn.execute(
        text(
            "CREATE TABLE ledger_sessions (session_id VARCHAR(200) NOT NULL PRIMARY KEY, owner VARCHAR(64) NOT NULL,"
            " state VARCHAR(8) NOT NULL, created_us BIGINT NOT NULL, closed_us BIGINT)"
        )
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial tables", _m001_initial),
    Migration(2, "key budgets", _m002_key_budgets),
    Migration(3, "ledger_sessions", _m003_ledger_sessions),
)

_PG_MIGRATION_LOCK = 0x68_6D_6C_65  # "hmle": pg_advisory_xact_lock key serialising concurrent Ledger.open


async def migrate(conn: AsyncConnection) -> list[int]:
    """Apply every missing migration in order inside the caller's write transaction; return those applied."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    await conn.run_sync(lambda sync: migrations_table.create(sync, checkfirst=True))
    done = set((await conn.execute(select(migrations_table.c.version))).scalars())
    applied = []
    for m in sorted(MIGRATIONS, key=lambda m: m.version):
        if m.version in done:
            continue
        await m.apply(conn)
        await conn.execute(
            migrations_table.insert().values(
                version=m.version, name=m.name, applied_us=time.time_ns() // 1000
            )
        )
        applied.append(m.version)
    return applied
