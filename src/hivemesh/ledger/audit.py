"""``verify``: read the whole journal in one snapshot and check it against its hash chains and balances."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hivemesh.ledger.accounts import WORLD
from hivemesh.ledger.chain import ChainWalker, EntryRecord, VerifyReport, first_problem
from hivemesh.ledger.checkpoint import Checkpoint
from hivemesh.ledger.schema import accounts, chain_heads, entries, postings

_ENTRY_COLUMNS = (
    entries.c.id,
    entries.c.seq,
    entries.c.ts_us,
    entries.c.kind,
    entries.c.reason,
    entries.c.session_id,
    entries.c.task_id,
    entries.c.node,
    entries.c.epoch,
    entries.c.prev_hash,
    entries.c.hash,
)


async def verify(conn: AsyncConnection, anchor: Checkpoint | None = None) -> VerifyReport:
    """Checks, in order: each shard's chain (links, hashes, balanced postings, head, and the hash at the signed
    checkpoint ``anchor``'s seq), then every stored balance against the sum of its postings. Reports the
    lowest-id bad entry found."""
    heads = {r.shard: r for r in await conn.execute(select(chain_heads))}
    used = set((await conn.execute(select(entries.c.shard).distinct())).scalars())
    anchored = {s: (q, h, anchor.describe()) for s, q, h in anchor.heads if q > 0} if anchor else {}
    sums: defaultdict[str, int] = defaultdict(int)
    walkers = []
    for shard in sorted(set(heads) | used | set(anchored)):
        head = heads.get(shard)
        walker = (
            ChainWalker(shard, head.seq, head.hash, head.last_entry_id, anchored.get(shard))
            if head is not None
            else ChainWalker(shard, -1, "(head row missing)", None, anchored.get(shard))
        )
        walkers.append(walker)
        query = (
            select(*_ENTRY_COLUMNS, postings.c.account, postings.c.delta)
            .select_from(entries.outerjoin(postings, postings.c.entry_id == entries.c.id))
            .where(entries.c.shard == shard)
            .order_by(entries.c.seq, entries.c.id, postings.c.account, postings.c.id)
        )
        current = None
        lines: list[tuple[str, int]] = []
        async for row in await conn.stream(query):
            if current is not None and row.id != current.id:
                walker.feed(
                    current.id, _record(shard, current._mapping, lines), current.prev_hash, current.hash
                )
                lines = []
            current = row
            if row.account is not None:
                lines.append((row.account, row.delta))
                sums[row.account] += row.delta
        if current is not None:
            walker.feed(current.id, _record(shard, current._mapping, lines), current.prev_hash, current.hash)
        walker.finish()
    checked = sum(w.checked for w in walkers)
    problem = first_problem(walkers)
    if problem is not None:
        return VerifyReport(False, checked, problem.entry_id, problem.reason)
    stored = {
        r.address: r.balance for r in await conn.execute(select(accounts.c.address, accounts.c.balance))
    }
    for account in sorted(set(stored) | set(sums)):
        have, should = stored.get(account), sums.get(account, 0)
        if have is None:
            return VerifyReport(False, checked, None, f"account {account} has postings but no balance row")
        if have != should:
            return VerifyReport(
                False,
                checked,
                None,
                f"stored balance of {account} is {have} but its postings sum to {should}",
            )
        if have < 0 and account != WORLD:
            return VerifyReport(False, checked, None, f"balance of {account} is negative ({have})")
    against = f", matching the signed {anchor.describe()}" if anchor is not None else ""
    return VerifyReport(
        True,
        checked,
        None,
        f"ok: {checked} entries in {len(walkers)} chain(s), {len(stored)} accounts{against}",
    )


def _record(shard: int, r: RowMapping, lines: list[tuple[str, int]]) -> EntryRecord:
    return EntryRecord(
        shard=shard,
        seq=r["seq"],
        ts_us=r["ts_us"],
        kind=r["kind"],
        reason=r["reason"],
        session_id=r["session_id"],
        task_id=r["task_id"],
        node=r["node"],
        epoch=r["epoch"],
        postings=tuple(sorted(lines)),  # Python's order, as when hashed: never the database collation's
    )
