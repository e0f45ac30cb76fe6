"""Reputation rows shared by every router of a cluster: counters added in SQL, levels moved under a row lock.

Several routers record work of the same node. A router that read a row, added its share in Python and wrote the
row back would overwrite the others' shares (a node served 6 tasks on one router and 4 on another; the row said
4). So nothing here writes a value read earlier in Python:

* ``add_counters``: one upsert per batch, ``INSERT ... ON CONFLICT (node, bucket) DO UPDATE SET x = x + excluded.x``
  (SQLite >= 3.24 and PostgreSQL alike): each router adds its deltas, the database does the sum.
* ``apply_outcomes``: a level is a state machine over the sequence of outcomes, not a sum. The rows are created if
  missing and then read and written in one transaction that holds them: ``SELECT ... FOR UPDATE`` in node order on
  PostgreSQL; on SQLite the first statement (an ``INSERT``) takes the database's write lock. Each router applies
  its pending outcomes to the state the others left.
* ``changed_since``: rows another router wrote since a moment, to refresh what this one keeps in memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Executable

from hivemesh.core.reputation import Counters, LevelState, apply_outcome
from hivemesh.store import schema as s
from hivemesh.store.db import Store

COUNTER_FIELDS = tuple(f.name for f in fields(Counters))
_ROWS_PER_SELECT = 500  # nodes per ``IN (...)``: well under SQLite's 32,766 bound parameters


@dataclass(frozen=True, slots=True)
class LevelRow:
    state: LevelState
    quarantined: bool
    updated_at: float


def _insert(store: Store) -> Any:
    return (postgresql if store.engine.dialect.name == "postgresql" else sqlite).insert


def add_counters(store: Store, deltas: Mapping[tuple[str, int], Counters]) -> list[tuple[Executable, Any]]:
    """``(statement, rows)`` adding each ``(node, bucket)``'s counters to its row (created at zero if missing):
    one upsert run as an executemany, for the store's writer."""
    if not deltas:
        return []
    now = time.time()
    rows = [
        {"node": node, "bucket": bucket, **asdict(c), "updated_at": now}
        for (node, bucket), c in sorted(deltas.items())
    ]
    t = s.node_stats
    names = ["node", "bucket", *COUNTER_FIELDS, "updated_at"]
    ins = _insert(store)(t).values({n: bindparam(n) for n in names})
    add = {f: t.c[f] + ins.excluded[f] for f in COUNTER_FIELDS}
    stmt = ins.on_conflict_do_update(
        index_elements=["node", "bucket"], set_={**add, "updated_at": ins.excluded.updated_at}
    )
    return [(stmt, rows)]


async def apply_outcomes(
    store: Store, outcomes: Mapping[str, Sequence[bool]], quarantined: Mapping[str, bool]
) -> dict[str, LevelState]:
    """Move each node's stored level by its outcomes, in order, and store ``quarantined`` (this router's view of
    the node's window, last writer wins); return the new states. One transaction holding the nodes' rows."""
    nodes = sorted(set(outcomes) | set(quarantined))
    if not nodes:
        return {}
    now = time.time()
    t = s.node_levels
    out: dict[str, LevelState] = {}
    async with store.engine.begin() as conn:
        fresh = [
            dict(node=n, level=0, streak=0, successes=0, attempts=0, quarantined=False, updated_at=now)
            for n in nodes
        ]
        ins = _insert(store)(t).values({n: bindparam(n) for n in fresh[0]})
        await conn.execute(ins.on_conflict_do_nothing(index_elements=["node"]), fresh)
        for i in range(0, len(nodes), _ROWS_PER_SELECT):
            part = nodes[i : i + _ROWS_PER_SELECT]
            q = select(t).where(t.c.node.in_(part)).order_by(t.c.node).with_for_update()
            for r in (await conn.execute(q)).mappings():
                state = LevelState(r["level"], r["streak"], r["successes"], r["attempts"])
                for success in outcomes.get(r["node"], ()):
                    state = apply_outcome(state, success)
                out[r["node"]] = state
        # one executemany per shape (with or without the quarantine flag), not a statement per node
        for marked in (True, False):
            params = [
                {"b_node": node, **asdict(state), "updated_at": now}
                | ({"quarantined": quarantined[node]} if marked else {})
                for node, state in out.items()
                if (node in quarantined) == marked
            ]
            if params:
                names = [*asdict(LevelState()), "updated_at", *(["quarantined"] if marked else [])]
                stmt = (
                    t.update().where(t.c.node == bindparam("b_node")).values({n: bindparam(n) for n in names})
                )
                await conn.execute(stmt, params)
    return out


async def changed_since(
    store: Store, since: float, first_bucket: int
) -> tuple[list[tuple[str, int, Counters]], dict[str, LevelRow]]:
    """Counter rows (bucket >= ``first_bucket``) and level rows written at or after ``since``."""
    st, lv = s.node_stats, s.node_levels
    stats = await store.fetch_all(select(st).where(st.c.updated_at >= since, st.c.bucket >= first_bucket))
    levels = await store.fetch_all(select(lv).where(lv.c.updated_at >= since))
    return (
        [(r["node"], r["bucket"], Counters(**{f: r[f] for f in COUNTER_FIELDS})) for r in stats],
        {
            r["node"]: LevelRow(
                LevelState(r["level"], r["streak"], r["successes"], r["attempts"]),
                bool(r["quarantined"]),
                r["updated_at"],
            )
            for r in levels
        },
    )
