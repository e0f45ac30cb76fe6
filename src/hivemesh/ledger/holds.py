"""Per-task holds in batches: many reserves, settlements and releases in one write transaction.

The money path of every billed request is a reserve before the task and a settlement (or release) after it. Run
one transaction each, they cost a dozen statements and a commit (an fsync) apiece, and the commit serialises
them: that, not the arithmetic, bounded billed throughput. Here a batch of operations (``Reserve``, ``Settle``,
``Release``) is applied in one transaction with a fixed number of bulk statements, whatever its size:

1. lock the rows the batch names, in the order ``book.py`` prescribes: sessions, holds, API keys (budgets), then
   the accounts (``FOR UPDATE``, sorted), then (when posting) the chain heads;
2. apply the operations one by one, in order, to that state in memory: each one either succeeds, changing the
   state the next one sees, or fails alone (its error is its result: ``InsufficientFunds``, ``NotFound``,
   ``LedgerError``) and changes nothing;
3. write what the successful ones did: new holds, closed holds, budgets, balances, and their journal entries
   (hash-chained in the batch's order, see ``Book.post``).

So each operation keeps the meaning it had alone (the checks run on exactly the state it would have seen had
the batch's operations run one after another), while the batch commits once. Money path of one task::

    owner --escrow--> escrow:<session> --reserve--> hold:<task> --payout--> miners
                                                               --charge--> treasury (fee)
                                                               --release-> escrow:<session> (the rest)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select

from hivemesh.errors import HivemeshError, InsufficientFunds, LedgerError, NotFound
from hivemesh.ledger import accounts as acc
from hivemesh.ledger.accounts import TREASURY, EntryKind
from hivemesh.ledger.book import Book, EntrySpec, RetryTransaction, cor
from hivemesh.ledger.schema import api_keys, holds, sessions
from hivemesh.ledger.views import Settlement, frozen_payouts

OPEN, CLOSED = "open", "closed"
HELD, SETTLED, RELEASED = "held", "settled", "released"


@dataclass(frozen=True, slots=True)
class Reserve:
    """Hold ``amount`` of the session's escrow for one task; ``top_up_from`` moves the shortfall from that owner
    first (opening the session if need be); ``key_id``'s budget, if it has one, counts the hold."""

    session_id: str
    task_id: str
    amount: int
    top_up_from: str | None = None
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class Settle:
    """Pay ``payouts`` and ``fee`` from the task's hold and release the rest (idempotent)."""

    task_id: str
    payouts: Mapping[str, int]
    fee: int


@dataclass(frozen=True, slots=True)
class Release:
    """Return the whole hold to the session's escrow (idempotent)."""

    task_id: str
    reason: str


Op = Reserve | Settle | Release
Result = int | Settlement | HivemeshError  # a failed operation's result is its error


def normalise(op: Op) -> Op:
    """Validate and normalise one operation's arguments (raises ``LedgerError`` for this operation only)."""
    if isinstance(op, Reserve):
        return Reserve(
            acc.ref(op.session_id, "session_id"),
            acc.ref(op.task_id, "task_id"),
            acc.amount(op.amount),
            None if op.top_up_from is None else acc.address(op.top_up_from),
            op.key_id,
        )
    if isinstance(op, Settle):
        pay: dict[str, int] = {}
        for miner, value in op.payouts.items():
            account = acc.holder(miner)
            pay[account] = pay.get(account, 0) + acc.amount(value, f"payout to {miner}", allow_zero=True)
        fee = acc.amount(op.fee, "treasury_fee", allow_zero=True)
        return Settle(acc.ref(op.task_id, "task_id"), {a: v for a, v in pay.items() if v}, fee)
    return Release(acc.ref(op.task_id, "task_id"), reason(op.reason))


def reason(text: str) -> str:
    """A journal entry's reason: text of at most 1000 characters, without NUL."""
    if not isinstance(text, str) or len(text) > 1000 or "\x00" in text:
        raise LedgerError("reason must be text of at most 1000 characters, without NUL", param="reason")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise LedgerError("reason must be valid Unicode text", param="reason") from None
    return text


_LOCK_SESSIONS = (
    select(sessions.c.session_id, sessions.c.owner, sessions.c.state)
    .where(sessions.c.session_id.in_(bindparam("ids", expanding=True)))
    .order_by(sessions.c.session_id)
    .with_for_update()
)
_LOCK_HOLDS = (
    select(
        holds.c.task_id,
        holds.c.session_id,
        holds.c.state,
        holds.c.amount,
        holds.c.fee,
        holds.c.released,
        holds.c.payouts,
        holds.c.key_id,
    )
    .where(holds.c.task_id.in_(bindparam("ids", expanding=True)))
    .order_by(holds.c.task_id)
    .with_for_update()
)
_LOCK_KEYS = (
    select(api_keys.c.key_id, api_keys.c.budget, api_keys.c.spent)
    .where(api_keys.c.key_id.in_(bindparam("ids", expanding=True)))
    .order_by(api_keys.c.key_id)
    .with_for_update()
)
# the bulk writes, as driver SQL (see ``Database.driver_sql``)
_SET_SPENT = "UPDATE api_keys SET spent = ? WHERE key_id = ?"
_CLOSE_HOLDS = (
    "UPDATE holds SET state = ?, fee = ?, released = ?, payouts = ?, closed_us = ? WHERE task_id = ?"
)
_INSERT_HOLDS = (  # SQLite only
    "INSERT INTO holds (task_id, session_id, amount, state, created_us, key_id) VALUES (?, ?, ?, ?, ?, ?)"
)


@dataclass(slots=True)
class _Hold:
    session_id: str
    state: str
    amount: int
    fee: int | None
    released: int | None
    payouts: str | None
    key_id: str | None
    new: bool = False
    closed: bool = False


@dataclass
class _State:
    """The batch's rows, in memory; the operations change it one by one."""

    sessions: dict[str, list[str]]  # id -> [owner, state]
    holds: dict[str, _Hold]
    budgets: dict[str, list[int]]  # key id -> [budget, spent], budgeted keys only
    balances: dict[str, int]
    specs: list[EntrySpec] = field(default_factory=list)
    spent_changed: set[str] = field(default_factory=set)

    def bal(self, account: str) -> int:
        return self.balances.get(account, 0)

    def post(self, *specs: EntrySpec) -> None:
        for spec in specs:
            for account, delta in spec.postings.items():
                self.balances[account] = self.bal(account) + delta
            self.specs.append(spec)

    def refund_budget(self, key_id: str | None, amount: int) -> None:
        budget = None if key_id is None else self.budgets.get(key_id)
        if budget is not None and amount:
            assert key_id is not None
            budget[1] = max(0, budget[1] - amount)
            self.spent_changed.add(key_id)


async def apply(book: Book, batch: Sequence[Op]) -> list[Result]:
    """Apply ``batch`` in one transaction (the ``book``'s); return each operation's result or error, in order."""
    results: list[Result | None] = [None] * len(batch)
    ops: list[tuple[int, Op]] = []
    for i, raw in enumerate(batch):
        try:
            ops.append((i, normalise(raw)))
        except HivemeshError as e:
            results[i] = e
    state = await _load(book, [op for _, op in ops])
    for i, op in ops:
        try:
            if isinstance(op, Reserve):
                results[i] = _reserve(state, op)
            elif isinstance(op, Settle):
                results[i] = _settle(state, op)
            else:
                results[i] = _release(state, op)
        except HivemeshError as e:
            results[i] = e
    await _write(book, state)
    return [r if r is not None else LedgerError("internal: no result") for r in results]


async def _load(book: Book, ops: Sequence[Op]) -> _State:
    conn = book.conn
    reserves = [op for op in ops if isinstance(op, Reserve)]
    opening = {op.session_id: op.top_up_from for op in reserves if op.top_up_from is not None}
    if opening:
        await conn.execute(
            book.db.insert_ignore(sessions),
            [
                {"session_id": s, "owner": owner, "state": OPEN, "created_us": book.now_us}
                for s, owner in sorted(opening.items())
            ],
        )
    session_ids = sorted({op.session_id for op in reserves})
    found: dict[str, list[str]] = {}
    if session_ids:
        rows = await conn.execute(_LOCK_SESSIONS, {"ids": session_ids})
        found = {r.session_id: [r.owner, r.state] for r in rows}
    task_ids = sorted({op.task_id for op in ops})
    held: dict[str, _Hold] = {}
    if task_ids:
        for r in await conn.execute(_LOCK_HOLDS, {"ids": task_ids}):
            held[r.task_id] = _Hold(
                r.session_id, r.state, int(r.amount), r.fee, r.released, r.payouts, r.key_id
            )
    key_ids = sorted(
        {op.key_id for op in reserves if op.key_id} | {h.key_id for h in held.values() if h.key_id}
    )
    budgets: dict[str, list[int]] = {}
    if key_ids:
        for r in await conn.execute(_LOCK_KEYS, {"ids": key_ids}):
            if r.budget is not None:
                budgets[r.key_id] = [int(r.budget), int(r.spent)]
    names: set[str] = set()
    for op in ops:
        if isinstance(op, Reserve):
            names |= {acc.escrow_account(op.session_id), acc.hold_account(op.task_id)}
            if op.top_up_from is not None:
                names.add(op.top_up_from)
        else:
            names.add(acc.hold_account(op.task_id))
            if isinstance(op, Settle):
                names |= {*op.payouts, TREASURY}
    names |= {acc.escrow_account(h.session_id) for h in held.values()}
    await book.lock(names, create=False)
    return _State(found, held, budgets, dict(book.balances))


def _reserve(state: _State, op: Reserve) -> int:
    session = state.sessions.get(op.session_id)
    if session is None:
        raise NotFound(f"No session {op.session_id!r} in the ledger; fund it first.", param="session_id")
    known_owner, session_state = session
    if session_state != OPEN:
        raise LedgerError(f"session {op.session_id!r} is closed", param="session_id")
    owner = op.top_up_from
    if owner is not None and known_owner != owner:
        raise LedgerError(f"session {op.session_id!r} belongs to {known_owner}, not {owner}", param="owner")
    existing = state.holds.get(op.task_id)
    if existing is not None:
        if (existing.session_id, existing.amount) == (op.session_id, op.amount):
            return 0  # the same reservation, retried
        raise LedgerError(f"task {op.task_id!r} already has a different reservation", param="task_id")
    budget = None if op.key_id is None else state.budgets.get(op.key_id)
    if budget is not None:
        limit, spent = budget
        if spent + op.amount > limit:
            raise InsufficientFunds(
                f"API key {op.key_id} has a budget of {cor(limit)} and has spent or reserved {cor(spent)}; "
                f"this request may cost up to {cor(op.amount)}. Lower max_tokens or use a key with a larger "
                "budget.",
                code="budget_exceeded",
            )
    escrow, hold = acc.escrow_account(op.session_id), acc.hold_account(op.task_id)
    have = state.bal(escrow)
    shortfall = max(0, op.amount - have)
    if shortfall and owner is None:
        raise InsufficientFunds(
            f"Session {op.session_id} has {cor(have)} left in escrow; task {op.task_id} needs {cor(op.amount)}. "
            f"Top up the session or lower max_tokens."
        )
    if owner is not None and shortfall > state.bal(owner):
        raise InsufficientFunds(
            f"Account {owner} has not enough balance for this request: it needs up to {cor(op.amount)}, "
            f"the session's escrow holds {cor(have)} and the account {cor(state.bal(owner))}."
        )
    if owner is not None and shortfall:
        state.post(
            EntrySpec(
                EntryKind.ESCROW,
                {owner: -shortfall, escrow: shortfall},
                "top-up for a request",
                session_id=op.session_id,
            )
        )
    state.post(
        EntrySpec(
            EntryKind.RESERVE,
            {escrow: -op.amount, hold: op.amount},
            "",
            session_id=op.session_id,
            task_id=op.task_id,
        )
    )
    if budget is not None:
        assert op.key_id is not None
        budget[1] += op.amount
        state.spent_changed.add(op.key_id)
    state.holds[op.task_id] = _Hold(
        op.session_id, HELD, op.amount, None, None, None, op.key_id if budget is not None else None, new=True
    )
    return shortfall


def _hold(state: _State, task_id: str) -> _Hold:
    h = state.holds.get(task_id)
    if h is None:
        raise NotFound(f"No reservation for task {task_id!r}.", param="task_id")
    return h


def _settle(state: _State, op: Settle) -> Settlement:
    h = _hold(state, op.task_id)
    if h.state == SETTLED:
        stored = {a: int(v) for a, v in json.loads(h.payouts or "{}").items()}
        return Settlement(
            op.task_id, h.session_id, h.amount, frozen_payouts(stored), h.fee or 0, h.released or 0, True
        )
    if h.state == RELEASED:
        raise LedgerError(f"task {op.task_id!r} was released (failed); it cannot be settled", param="task_id")
    charged = sum(op.payouts.values()) + op.fee
    if charged > h.amount:
        raise InsufficientFunds(
            f"Settlement of task {op.task_id} ({cor(charged)}) exceeds its reservation of {cor(h.amount)}."
        )
    rest = h.amount - charged
    hold, escrow = acc.hold_account(op.task_id), acc.escrow_account(h.session_id)
    sid, tid = h.session_id, op.task_id
    state.post(
        EntrySpec(
            EntryKind.PAYOUT, {hold: -sum(op.payouts.values()), **op.payouts}, "task settled", sid, tid
        ),
        EntrySpec(EntryKind.CHARGE, {hold: -op.fee, TREASURY: op.fee}, "protocol fee", sid, tid),
        EntrySpec(EntryKind.RELEASE, {hold: -rest, escrow: rest}, "unused reservation", sid, tid),
    )
    state.refund_budget(h.key_id, rest)
    h.state, h.fee, h.released, h.closed = SETTLED, op.fee, rest, True
    h.payouts = json.dumps({a: str(v) for a, v in sorted(op.payouts.items())})
    return Settlement(op.task_id, h.session_id, h.amount, frozen_payouts(op.payouts), op.fee, rest)


def _release(state: _State, op: Release) -> int:
    h = _hold(state, op.task_id)
    if h.state == RELEASED:
        return 0
    if h.state == SETTLED:
        raise LedgerError(f"task {op.task_id!r} is already settled; nothing to release", param="task_id")
    hold, escrow = acc.hold_account(op.task_id), acc.escrow_account(h.session_id)
    state.post(
        EntrySpec(
            EntryKind.RELEASE,
            {hold: -h.amount, escrow: h.amount},
            op.reason,
            session_id=h.session_id,
            task_id=op.task_id,
        )
    )
    state.refund_budget(h.key_id, h.amount)
    h.state, h.fee, h.released, h.payouts, h.closed = RELEASED, 0, h.amount, None, True
    return h.amount


async def _write(book: Book, state: _State) -> None:
    conn = book.conn
    amount, sql = book.db.amount, book.db.driver_sql
    new = sorted((t, h) for t, h in state.holds.items() if h.new)
    if new and book.db.dialect == "sqlite":  # the write lock is ours since BEGIN: no concurrent creator
        await conn.exec_driver_sql(
            _INSERT_HOLDS, [(t, h.session_id, amount(h.amount), HELD, book.now_us, h.key_id) for t, h in new]
        )
    elif new:
        rows: list[dict[str, Any]] = [
            {
                "task_id": t,
                "session_id": h.session_id,
                "amount": h.amount,
                "state": HELD,
                "created_us": book.now_us,
                "key_id": h.key_id,
            }
            for t, h in new
        ]
        created = await conn.execute(book.db.insert_ignore(holds, holds.c.task_id), rows)
        if len(set(created.scalars())) != len(rows):
            raise RetryTransaction("holds created concurrently")
    closed = [
        (
            h.state,
            None if h.fee is None else amount(h.fee),
            None if h.released is None else amount(h.released),
            h.payouts,
            book.now_us,
            t,
        )
        for t, h in sorted(state.holds.items())
        if h.closed
    ]
    if closed:
        await conn.exec_driver_sql(sql(_CLOSE_HOLDS), closed)
    if state.spent_changed:
        await conn.exec_driver_sql(
            sql(_SET_SPENT), [(amount(state.budgets[k][1]), k) for k in sorted(state.spent_changed)]
        )
    if state.specs:
        await book.create({a for spec in state.specs for a, d in spec.postings.items() if d})
        await book.post(*state.specs)
