"""Posting balanced entries inside one write transaction.

A ``Book`` belongs to one transaction. The caller first ``lock``s every account the call will touch (or locks
those that exist and ``create``s the rest before posting), then ``post``s its entries once. The lock order is fixed for every transaction in the ledger, which is what keeps
concurrent PostgreSQL transactions from deadlocking:

1. the call's own rows, taken by the operation before ``lock``: ``sessions`` (sorted), then ``holds`` (sorted),
   then ``api_keys`` (sorted) -- a batch of holds (``holds.py``) takes all three in this order -- or ``stakes``;
2. account rows, ``SELECT ... FOR UPDATE ORDER BY address``; then accounts that do not exist yet are inserted
   (ON CONFLICT DO NOTHING, in sorted order). A new row is locked by its creator until commit; if another
   transaction created one first, locking it now could invert the order, so the whole call is rolled back and
   run again (``RetryTransaction``), when the row exists and is locked in step 2;
3. chain head rows, ``FOR UPDATE ORDER BY shard``.

Balances are checked here (``InsufficientFunds``, with the numbers) before anything is written, and again by
the database's CHECK constraint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select, update

from hivemesh.errors import InsufficientFunds, LedgerError, LedgerIntegrityError
from hivemesh.ledger.accounts import COR, WORLD, EntryKind
from hivemesh.ledger.chain import EntryRecord, entry_hash, shard_of
from hivemesh.ledger.db import Database
from hivemesh.ledger.schema import accounts, chain_heads


def cor(amount: int) -> str:
    """``1500000000000000000`` -> ``"1.5 COR"``: exact, for messages."""
    whole, frac = divmod(abs(amount), COR)
    digits = f"{frac:018d}".rstrip("0")
    return f"{'-' if amount < 0 else ''}{whole}{'.' + digits if digits else ''} COR"


# Statements built once: constructing a Core statement costs more than executing it on the hot path.
_LOCK_ACCOUNTS = (
    select(accounts.c.address, accounts.c.balance, accounts.c.earned)
    .where(accounts.c.address.in_(bindparam("names", expanding=True)))
    .order_by(accounts.c.address)
    .with_for_update()
)
# the bulk writes, as driver SQL (see ``Database.driver_sql``)
_UPDATE_ACCOUNTS = "UPDATE accounts SET balance = ?, earned = ? WHERE address = ?"
_INSERT_ENTRIES = (
    "INSERT INTO entries (shard, seq, ts_us, kind, reason, session_id, task_id, node, epoch, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ENTRY_IDS = "SELECT seq, id FROM entries WHERE shard = ? AND seq >= ? AND seq <= ?"
_INSERT_POSTINGS = "INSERT INTO postings (entry_id, account, delta) VALUES (?, ?, ?)"
_INSERT_ACCOUNTS = "INSERT INTO accounts (address, balance, earned) VALUES (?, ?, ?)"  # SQLite only
_LOCK_HEADS = (
    select(chain_heads.c.shard, chain_heads.c.seq, chain_heads.c.hash)
    .where(chain_heads.c.shard.in_(bindparam("shards", expanding=True)))
    .order_by(chain_heads.c.shard)
    .with_for_update()
)
_UPDATE_HEAD = (
    update(chain_heads)
    .where(chain_heads.c.shard == bindparam("_s"))
    .values(seq=bindparam("_q"), hash=bindparam("_h"), last_entry_id=bindparam("_i"))
)


class RetryTransaction(Exception):
    """Internal: roll back and run the whole operation again (see ``Ledger._run``)."""


@dataclass(frozen=True)
class EntrySpec:
    """One balanced movement to post. ``postings`` map account -> delta and must sum to zero."""

    kind: EntryKind
    postings: Mapping[str, int]
    reason: str = ""
    session_id: str | None = None
    task_id: str | None = None
    node: str | None = None
    epoch: int | None = None
    shard_key: str | None = None  # default: task_id, else session_id, else node, else the first account

    def key(self) -> str:
        if self.shard_key is not None:
            return self.shard_key
        return self.task_id or self.session_id or self.node or min(a for a in self.postings if a != WORLD)


@dataclass
class Book:
    db: Database
    conn: Any  # AsyncConnection
    shards: int
    now_us: int
    balances: dict[str, int] = field(default_factory=dict)
    earned: dict[str, int] = field(default_factory=dict)
    _locked: bool = False
    _posted: bool = False

    async def lock(self, names: Iterable[str], *, create: bool = True) -> dict[str, int]:
        """Row-lock these accounts, in sorted order, creating the missing ones at zero (unless ``create`` is
        False: then ``create`` them later, before posting); return their balances."""
        if self._locked:
            raise LedgerIntegrityError("internal: accounts must be locked once per transaction, all together")
        self._locked = True
        wanted = sorted(set(names))
        rows = await self.conn.execute(_LOCK_ACCOUNTS, {"names": wanted})
        for r in rows:
            self.balances[r.address] = r.balance
            self.earned[r.address] = r.earned
        if create:
            await self.create(wanted)
        return self.balances

    async def create(self, names: Iterable[str]) -> None:
        """Create (at zero) those of these accounts that ``lock`` did not find; they are locked as created."""
        missing = sorted(set(names) - set(self.balances))
        if not missing:
            return
        if self.db.dialect == "sqlite":
            # this transaction holds SQLite's one write lock since its BEGIN IMMEDIATE: what it found missing
            # is still missing, so a plain bulk insert does (no RETURNING, compiled once)
            zero = self.db.amount(0)
            await self.conn.exec_driver_sql(_INSERT_ACCOUNTS, [(a, zero, zero) for a in missing])
            for a in missing:
                self.balances[a] = self.earned[a] = 0
            return
        created = await self.conn.execute(
            self.db.insert_ignore(accounts, accounts.c.address),
            [{"address": a, "balance": 0, "earned": 0} for a in missing],
        )
        fresh = set(created.scalars())
        if fresh != set(missing):
            # Another transaction created one of them since our SELECT. Locking it now would break the
            # lock order; start over instead, when it exists and sorts into place.
            raise RetryTransaction(f"accounts created concurrently: {sorted(set(missing) - fresh)}")
        for a in missing:
            self.balances[a] = self.earned[a] = 0

    async def move(self, spec: EntrySpec) -> int:
        """Lock the accounts of one entry and post it: the whole of a simple transfer."""
        await self.lock(spec.postings)
        return (await self.post(spec))[0]

    async def post(self, *specs: EntrySpec) -> list[int]:
        """Post these entries (once per transaction) and return their ids, in order."""
        if self._posted or not self._locked:
            raise LedgerIntegrityError("internal: post once per transaction, after lock")
        self._posted = True
        specs = tuple(s for s in specs if any(d != 0 for d in s.postings.values()))
        if not specs:
            return []
        new = dict(self.balances)
        earned = dict(self.earned)
        for spec in specs:
            self._check_balanced(spec)
            for account, delta in spec.postings.items():
                new[account] += delta
                if delta > 0 and spec.kind in (EntryKind.PAYOUT, EntryKind.REWARD):
                    earned[account] += delta
            for account, delta in spec.postings.items():
                if delta < 0 and new[account] < 0 and account != WORLD:
                    have = new[account] - delta
                    raise InsufficientFunds(
                        f"Insufficient funds in {account}: it holds {cor(have)} ({have}) but this {spec.kind.value} "
                        f"needs {cor(-delta)} ({-delta})."
                    )
        amount = self.db.amount
        changed = [
            (amount(new[a]), amount(earned[a]), a)
            for a in sorted(new)
            if (new[a], earned[a]) != (self.balances[a], self.earned[a])
        ]
        if changed:
            await self.conn.exec_driver_sql(self.db.driver_sql(_UPDATE_ACCOUNTS), changed)
        self.balances, self.earned = new, earned
        return await self._journal(specs)

    def _check_balanced(self, spec: EntrySpec) -> None:
        if not isinstance(spec.reason, str) or len(spec.reason) > 1000 or "\x00" in spec.reason:
            raise LedgerError("reason must be text of at most 1000 characters, without NUL", param="reason")
        try:
            spec.reason.encode()
        except UnicodeEncodeError:
            raise LedgerError("reason must be valid Unicode text", param="reason") from None
        moves = {a: d for a, d in spec.postings.items() if d != 0}
        unknown = set(moves) - set(self.balances)
        if unknown:
            raise LedgerIntegrityError(
                f"internal: {spec.kind.value} touches unlocked accounts {sorted(unknown)}"
            )
        if len(moves) < 2 or sum(moves.values()) != 0:
            raise LedgerIntegrityError(f"internal: unbalanced {spec.kind.value} entry {moves}")

    async def _journal(self, specs: tuple[EntrySpec, ...]) -> list[int]:
        shards = [shard_of(s.key(), self.shards) for s in specs]
        heads = {
            r.shard: (r.seq, r.hash)
            for r in await self.conn.execute(_LOCK_HEADS, {"shards": sorted(set(shards))})
        }
        rows: list[tuple[Any, ...]] = []
        lines: list[tuple[tuple[str, int], ...]] = []
        first: dict[int, int] = {}
        for spec, shard in zip(specs, shards, strict=True):
            if shard not in heads:
                raise LedgerIntegrityError(f"chain head row for shard {shard} is missing")
            seq, prev = heads[shard]
            first.setdefault(shard, seq + 1)
            record = EntryRecord(
                shard=shard,
                seq=seq + 1,
                ts_us=self.now_us,
                kind=spec.kind.value,
                reason=spec.reason,
                session_id=spec.session_id,
                task_id=spec.task_id,
                node=spec.node,
                epoch=spec.epoch,
                postings=tuple(sorted((a, d) for a, d in spec.postings.items() if d != 0)),
            )
            digest = entry_hash(prev, record)
            heads[shard] = (seq + 1, digest)
            lines.append(record.postings)
            rows.append(
                (
                    shard,
                    seq + 1,
                    self.now_us,
                    record.kind,
                    record.reason,
                    record.session_id,
                    record.task_id,
                    record.node,
                    record.epoch,
                    prev,
                    digest,
                )
            )
        # Plain executemany, then the ids by (shard, seq): this transaction holds the shards' head rows, so
        # those seqs are its own entries (RETURNING with executemany would compile each row separately).
        sql = self.db.driver_sql
        await self.conn.exec_driver_sql(sql(_INSERT_ENTRIES), rows)
        by_seq: dict[tuple[int, int], int] = {}
        for shard, start in first.items():
            found = await self.conn.exec_driver_sql(sql(_ENTRY_IDS), (shard, start, heads[shard][0]))
            by_seq.update({(shard, int(seq)): int(i) for seq, i in found})
        ids = [by_seq[(r[0], r[1])] for r in rows]
        amount = self.db.amount
        await self.conn.exec_driver_sql(
            sql(_INSERT_POSTINGS),
            [(i, a, amount(d)) for i, ps in zip(ids, lines, strict=True) for a, d in ps],
        )
        last_id = {shard: i for shard, i in zip(shards, ids, strict=True)}
        await self.conn.execute(
            _UPDATE_HEAD,
            [{"_s": s, "_q": heads[s][0], "_h": heads[s][1], "_i": last_id[s]} for s in sorted(last_id)],
        )
        return ids
