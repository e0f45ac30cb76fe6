"""The router's tables (SQLAlchemy Core) and their ordered, recorded migrations.

Migrations are applied in order and recorded in ``_migrations``; a migration never changes once released, a
schema change is a new migration at the end of the list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

from hivemesh.core.reputation import Counters

metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False, default=""),
    Column("model", String(200), nullable=True),
    Column("redundancy", Integer, nullable=False),
    Column("quorum", Integer, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("ack_timeout_ms", Integer, nullable=False),
    Column("precommit_timeout_ms", Integer, nullable=False),
    Column("commit_timeout_ms", Integer, nullable=False),
    Column("max_tokens", Integer, nullable=False),
    Column("sla", String(16), nullable=False),
    Column("verifiers", Integer, nullable=False, default=1),  # token mode: verifiers per answer
    Column("tolerance", String(16), nullable=False, default="calibrated"),  # 007: token mode's tolerance
    Column("meta", JSON, nullable=False, default=dict),
    Column("active", Boolean, nullable=False, default=True),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("request", JSON, nullable=False),  # the wire request: messages/prompt, params, stream
    Column("phase", String(16), nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("candidates", JSON, nullable=False, default=list),  # the shuffle's nodes the task read, in order
    Column("draw", JSON, nullable=True),  # 005: core.pool_index.DrawAudit (seed, eligible count, set digest)
    Column("verdict", String(16), nullable=True),
    Column("answer", Text, nullable=True),
    Column("finish_reason", String(16), nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("result", JSON, nullable=True),  # the hivemesh verification block
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_tasks_session_created", "session_id", "created_at"),
    Index("ix_tasks_phase", "phase"),
    Index("ix_tasks_created", "created_at"),  # 005
)

task_events = Table(
    "task_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(64), nullable=False, index=True),
    Column("ts", Float, nullable=False),
    Column("phase", String(24), nullable=False),
    Column("node", String(64), nullable=True),
    Column("detail", JSON, nullable=False, default=dict),
)

assignments = Table(
    "assignments",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("node", String(64), primary_key=True),
    Column("slot", Integer, nullable=False),
    Column("status", String(24), nullable=False),  # assigned/acked/precommitted/committed/failed + reason
    Column("assigned_at", Float, nullable=False),
    Column("acked_at", Float, nullable=True),
    Column("precommit_at", Float, nullable=True),
    Column("commit_at", Float, nullable=True),
    Column("digest", String(80), nullable=True),
    Column("output", Text, nullable=True),
    Column("salt", String(80), nullable=True),
    Column("in_consensus", Boolean, nullable=True),
    Column("elapsed_ms", Integer, nullable=True),
    Column("ttft_ms", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("reason", Text, nullable=True),
    Column("role", String(16), nullable=True),  # token mode: generator | verifier (null: a voting slot)
    Column("evidence", JSON, nullable=True),  # token mode: a verifier's verdict on the claim it checked
)

nodes = Table(
    "nodes",
    metadata,
    Column("address", String(64), primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("models", JSON, nullable=False, default=list),
    Column("capacity", Integer, nullable=False, default=1),
    Column("pool", Integer, nullable=False, default=0),
    Column("hardware", JSON, nullable=False, default=dict),
    Column("version", String(64), nullable=False, default=""),
    Index("ix_nodes_last_seen", "last_seen"),  # 005
)

node_events = Table(
    "node_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False, index=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),  # bad_signature, replay, bad_reveal, timeout, dissent, ...
    Column("task_id", String(64), nullable=True),
    Column("detail", Text, nullable=False, default=""),
)


node_stats = Table(
    "node_stats",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("bucket", BigInteger, primary_key=True),  # unix time of the hour's start
    *(Column(f.name, BigInteger, nullable=False, default=0) for f in fields(Counters)),
    Column("updated_at", Float, nullable=False, default=0.0),  # 006: last write (routers refresh from it)
    Index("ix_node_stats_updated", "updated_at"),  # 006
)

node_levels = Table(
    "node_levels",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("level", Integer, nullable=False),
    Column("streak", Integer, nullable=False),
    Column("successes", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("quarantined", Boolean, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_node_levels_updated", "updated_at"),  # 006
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),  # what is leased, e.g. "oracle": the validators' leadership
    Column("holder", String(64), nullable=False),  # the address holding it
    Column("expires_at", Float, nullable=False),  # unix time; past it, anyone may take the lease
    Column("updated_at", Float, nullable=False),
)


def _m001_initial(conn: Connection) -> None:
    metadata.create_all(conn, tables=[sessions, tasks, task_events, assignments, nodes, node_events])


def _m002_reputation(conn: Connection) -> None:
    metadata.create_all(conn, tables=[node_stats, node_levels])


def _m003_leases(conn: Connection) -> None:
    metadata.create_all(conn, tables=[leases])


def _m004_token_verification(conn: Connection) -> None:
    # Written out as DDL. 001 builds its tables from today's definitions (create_all), so on a new database the
    # columns exist already: add only what is missing.
    have = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("sessions", "assignments")}
    for table, column, ddl in (
        ("sessions", "verifiers", "INTEGER NOT NULL DEFAULT 1"),
        ("assignments", "role", "VARCHAR(16)"),
        ("assignments", "evidence", "JSON"),
    ):
        if column not in have[table]:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


def _m005_views_and_draws(conn: Connection) -> None:
    # Indexes for the paginated views (nodes seen since, latest tasks) and the draw's audit record. As in 004, a
    # new database has them from 001 already.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_nodes_last_seen ON nodes (last_seen)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_tasks_created ON tasks (created_at)"))
    if "draw" not in {c["name"] for c in inspect(conn).get_columns("tasks")}:
        conn.execute(text("ALTER TABLE tasks ADD COLUMN draw JSON"))


def _m006_shared_reputation(conn: Connection) -> None:
    # Routers of a cluster add to the same reputation rows and refresh from each other's writes: a node's counter
    # rows say when they were last written. As in 004, a new database has all of it from 001/002 already.
    if "updated_at" not in {c["name"] for c in inspect(conn).get_columns("node_stats")}:
        conn.execute(text("ALTER TABLE node_stats ADD COLUMN updated_at FLOAT NOT NULL DEFAULT 0"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_node_stats_updated ON node_stats (updated_at)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_node_levels_updated ON node_levels (updated_at)"))


def _m007_session_tolerance(conn: Connection) -> None:
    if "tolerance" not in {c["name"] for c in inspect(conn).get_columns("sessions")}:
        conn.execute(
            text("ALTER TABLE sessions ADD COLUMN tolerance VARCHAR(16) NOT NULL DEFAULT 'calibrated'")
        )


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial", _m001_initial),
    ("002_reputation", _m002_reputation),
    ("003_leases", _m003_leases),
    ("004_token_verification", _m004_token_verification),
    ("005_views_and_draws", _m005_views_and_draws),
    ("006_shared_reputation", _m006_shared_reputation),
    ("007_session_tolerance", _m007_session_tolerance),
]
