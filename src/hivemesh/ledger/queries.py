"""Read-only queries over the journal for dashboards and reports: recent entries, balances by account kind, the
top earning addresses. Nothing here writes; every function takes a read connection (one snapshot per call).

Amounts stay exact ints. On SQLite they are canonical decimal TEXT, so sums happen in Python and ordering by an
amount uses (length, text), which is numeric order for non-negative canonical integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hivemesh.ledger.accounts import REWARD_POOL, TREASURY, WORLD, from_us
from hivemesh.ledger.schema import accounts, entries, postings

KINDS = ("accounts", TREASURY, REWARD_POOL, "escrow", "hold", "stake", "unstaking", WORLD, "other")
"""The buckets of ``balances_by_kind``: ``accounts`` are user and node addresses, the rest system accounts."""


@dataclass(frozen=True)
class EntryView:
    """One journal entry with its postings, as (account, delta) pairs in posting order."""

    id: int
    ts: datetime
    kind: str
    reason: str
    session_id: str | None
    task_id: str | None
    node: str | None
    postings: tuple[tuple[str, int], ...]

    @property
    def amount(self) -> int:
        """What the entry moved: the sum of its credits (equal to the sum of its debits)."""
        return sum(d for _, d in self.postings if d > 0)


def kind_of(account: str) -> str:
    """The ``KINDS`` bucket an account name falls in."""
    if account.startswith("0x"):
        return "accounts"
    if account in (TREASURY, REWARD_POOL, WORLD):
        return account
    prefix, sep, _ = account.partition(":")
    return prefix if sep and prefix in KINDS else "other"


async def recent_entries(conn: AsyncConnection, limit: int) -> list[EntryView]:
    rows = (
        await conn.execute(
            select(
                entries.c.id,
                entries.c.ts_us,
                entries.c.kind,
                entries.c.reason,
                entries.c.session_id,
                entries.c.task_id,
                entries.c.node,
            )
            .order_by(entries.c.id.desc())
            .limit(limit)
        )
    ).all()
    if not rows:
        return []
    moved: dict[int, list[tuple[str, int]]] = {r.id: [] for r in rows}
    for p in await conn.execute(
        select(postings.c.entry_id, postings.c.account, postings.c.delta)
        .where(postings.c.entry_id.in_(list(moved)))
        .order_by(postings.c.id)
    ):
        moved[p.entry_id].append((p.account, int(p.delta)))
    return [
        EntryView(
            id=int(r.id),
            ts=from_us(int(r.ts_us)),
            kind=r.kind,
            reason=r.reason,
            session_id=r.session_id,
            task_id=r.task_id,
            node=r.node,
            postings=tuple(moved[r.id]),
        )
        for r in rows
    ]


async def balances_by_kind(conn: AsyncConnection) -> dict[str, int]:
    """Every balance summed per ``KINDS`` bucket (all buckets present, 0 when empty)."""
    out = dict.fromkeys(KINDS, 0)
    if conn.dialect.name == "postgresql":  # NUMERIC sums exactly in SQL
        a = accounts.c.address
        bucket = case(
            (a.like("0x%"), "accounts"),
            (a.in_([TREASURY, REWARD_POOL, WORLD]), a),
            *((a.like(f"{k}:%"), k) for k in ("escrow", "hold", "stake", "unstaking")),
            else_="other",
        ).label("bucket")
        for r in await conn.execute(select(bucket, func.sum(accounts.c.balance)).group_by(bucket)):
            out[r[0]] = int(r[1] or 0)
        return out
    for r in await conn.execute(select(accounts.c.address, accounts.c.balance)):
        out[kind_of(r.address)] += int(r.balance)
    return out


async def top_accounts(conn: AsyncConnection, prefix: str, limit: int) -> list[tuple[str, int, int]]:
    """(address, balance, earned) of the user and node addresses starting with ``prefix``, most earned first."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    q = select(accounts.c.address, accounts.c.balance, accounts.c.earned).where(
        accounts.c.address.like("0x%"), accounts.c.address.like(pattern, escape="\\")
    )
    if conn.dialect.name == "postgresql":
        q = q.order_by(accounts.c.earned.desc(), accounts.c.address)
    else:  # canonical decimal text: longer is larger, then text order
        q = q.order_by(func.length(accounts.c.earned).desc(), accounts.c.earned.desc(), accounts.c.address)
    rows = await conn.execute(q.limit(limit))
    return [(r.address, int(r.balance), int(r.earned)) for r in rows]
