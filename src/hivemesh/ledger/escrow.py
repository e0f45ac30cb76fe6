"""Sessions and tasks: escrow funding, per-task reservations, settlement and release.

Each function runs inside the caller's write transaction (a ``Book``). It locks its own row first (the session
or the hold), then the accounts, then posts: the order ``book.py`` prescribes.

Money path of one task::

    owner --escrow--> escrow:<session> --reserve--> hold:<task> --payout--> miners
                                                               --charge--> treasury (fee)
                                                               --release-> escrow:<session> (the rest)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, func, select, update

from hivemesh.errors import InsufficientFunds, LedgerError, NotFound
from hivemesh.ledger import accounts as acc
from hivemesh.ledger.accounts import TREASURY, EntryKind, from_us
from hivemesh.ledger.book import Book, EntrySpec, cor
from hivemesh.ledger.schema import Amount, api_keys, holds, sessions
from hivemesh.ledger.views import HoldView, Settlement, frozen_payouts

OPEN, CLOSED = "open", "closed"
HELD, SETTLED, RELEASED = "held", "settled", "released"


_LOCK_SESSION = (
    select(sessions.c.owner, sessions.c.state)
    .where(sessions.c.session_id == bindparam("session_id"))
    .with_for_update()
)
_LOCK_KEY = (
    select(api_keys.c.budget, api_keys.c.spent)
    .where(api_keys.c.key_id == bindparam("key_id"))
    .with_for_update()
)
_SET_SPENT = (
    update(api_keys)
    .where(api_keys.c.key_id == bindparam("_k"))
    .values(spent=bindparam("_spent", type_=Amount()))
)
_LOCK_HOLD = (
    select(
        holds.c.session_id,
        holds.c.state,
        holds.c.amount,
        holds.c.fee,
        holds.c.released,
        holds.c.payouts,
        holds.c.key_id,
    )
    .where(holds.c.task_id == bindparam("task_id"))
    .with_for_update()
)
_CLOSE_HOLD = (
    update(holds)
    .where(holds.c.task_id == bindparam("_task"))
    .values(
        state=bindparam("_state"),
        fee=bindparam("_fee", type_=Amount()),
        released=bindparam("_released", type_=Amount()),
        payouts=bindparam("_payouts"),
        closed_us=bindparam("_at"),
    )
)


async def _lock_session(book: Book, session_id: str) -> tuple[str, str]:
    row = (await book.conn.execute(_LOCK_SESSION, {"session_id": session_id})).first()
    if row is None:
        raise NotFound(f"No session {session_id!r} in the ledger; fund it first.", param="session_id")
    return row.owner, row.state


async def fund_session(book: Book, session_id: str, owner: str, amount: int, reason: str) -> int:
    session_id, owner, amount = acc.ref(session_id, "session_id"), acc.address(owner), acc.amount(amount)
    await book.conn.execute(
        book.db.insert_ignore(sessions),
        {"session_id": session_id, "owner": owner, "state": OPEN, "created_us": book.now_us},
    )
    known_owner, state = await _lock_session(book, session_id)
    if state != OPEN:
        raise LedgerError(f"session {session_id!r} is closed", param="session_id")
    if known_owner != owner:
        raise LedgerError(f"session {session_id!r} belongs to {known_owner}, not {owner}", param="owner")
    escrow = acc.escrow_account(session_id)
    await book.lock([owner, escrow])
    spec = EntrySpec(EntryKind.ESCROW, {owner: -amount, escrow: amount}, reason, session_id=session_id)
    return (await book.post(spec))[0]


async def close_session(book: Book, session_id: str, refund_to: str) -> int:
    session_id, refund_to = acc.ref(session_id, "session_id"), acc.holder(refund_to)
    _owner, state = await _lock_session(book, session_id)
    if state == CLOSED:
        return 0
    in_flight = (
        await book.conn.execute(
            select(func.count()).where(holds.c.session_id == session_id, holds.c.state == HELD)
        )
    ).scalar_one()
    if in_flight:
        raise LedgerError(
            f"session {session_id!r} still has {in_flight} task(s) reserved; settle or release them first",
            param="session_id",
        )
    escrow = acc.escrow_account(session_id)
    balances = await book.lock([escrow, refund_to])
    rest = balances[escrow]
    spec = EntrySpec(
        EntryKind.RELEASE, {escrow: -rest, refund_to: rest}, "session closed: refund", session_id=session_id
    )
    await book.post(spec)
    await book.conn.execute(
        update(sessions)
        .where(sessions.c.session_id == session_id)
        .values(state=CLOSED, closed_us=book.now_us)
    )
    return rest


async def reserve(
    book: Book,
    session_id: str,
    task_id: str,
    amount: int,
    *,
    top_up_from: str | None = None,
    key_id: str | None = None,
) -> int:
    """Hold ``amount`` of the session's escrow for one task; return what was topped up first (0 if nothing).

    With ``top_up_from`` (the owner of a key's default session) the session is opened if need be and exactly the
    shortfall is moved from the owner's balance in the same transaction, so no concurrent reserve can take the
    top-up in between. With ``key_id`` of a key that has a budget, the amount counts against it."""
    session_id, task_id, amount = (
        acc.ref(session_id, "session_id"),
        acc.ref(task_id, "task_id"),
        acc.amount(amount),
    )
    owner = None if top_up_from is None else acc.address(top_up_from)
    if owner is not None:
        await book.conn.execute(
            book.db.insert_ignore(sessions),
            {"session_id": session_id, "owner": owner, "state": OPEN, "created_us": book.now_us},
        )
    known_owner, state = await _lock_session(book, session_id)
    if state != OPEN:
        raise LedgerError(f"session {session_id!r} is closed", param="session_id")
    if owner is not None and known_owner != owner:
        raise LedgerError(f"session {session_id!r} belongs to {known_owner}, not {owner}", param="owner")
    budget = None if key_id is None else await _lock_budget(book, key_id)
    created = (
        await book.conn.execute(
            book.db.insert_ignore(holds, holds.c.task_id),
            {
                "task_id": task_id,
                "session_id": session_id,
                "amount": amount,
                "state": HELD,
                "created_us": book.now_us,
                "key_id": key_id if budget is not None else None,
            },
        )
    ).first()
    if created is None:
        existing = (
            await book.conn.execute(
                select(holds.c.session_id, holds.c.amount).where(holds.c.task_id == task_id)
            )
        ).one()
        if (existing.session_id, existing.amount) == (session_id, amount):
            return 0  # the same reservation, retried
        raise LedgerError(f"task {task_id!r} already has a different reservation", param="task_id")
    if budget is not None:
        assert key_id is not None
        limit, spent = budget
        if spent + amount > limit:
            raise InsufficientFunds(
                f"API key {key_id} has a budget of {cor(limit)} and has spent or reserved {cor(spent)}; "
                f"this request may cost up to {cor(amount)}. Lower max_tokens or use a key with a larger budget.",
                code="budget_exceeded",
            )
        await book.conn.execute(_SET_SPENT, {"_k": key_id, "_spent": spent + amount})
    escrow, hold = acc.escrow_account(session_id), acc.hold_account(task_id)
    balances = await book.lock([escrow, hold, *([owner] if owner is not None else [])])
    shortfall = max(0, amount - balances[escrow])
    if shortfall and owner is None:
        raise InsufficientFunds(
            f"Session {session_id} has {cor(balances[escrow])} left in escrow; task {task_id} needs {cor(amount)}. "
            f"Top up the session or lower max_tokens."
        )
    if owner is not None and shortfall > balances[owner]:
        raise InsufficientFunds(
            f"Account {owner} has not enough balance for this request: it needs up to {cor(amount)}, "
            f"the session's escrow holds {cor(balances[escrow])} and the account {cor(balances[owner])}."
        )
    top_up = (
        [
            EntrySpec(
                EntryKind.ESCROW,
                {owner: -shortfall, escrow: shortfall},
                "top-up for a request",
                session_id=session_id,
            )
        ]
        if owner is not None and shortfall
        else []
    )
    spec = EntrySpec(
        EntryKind.RESERVE, {escrow: -amount, hold: amount}, "", session_id=session_id, task_id=task_id
    )
    await book.post(*top_up, spec)
    return shortfall


async def _lock_budget(book: Book, key_id: str) -> tuple[int, int] | None:
    """Lock the key's row if it has a budget; return (budget, spent), or None for an unbudgeted key."""
    row = (await book.conn.execute(_LOCK_KEY, {"key_id": key_id})).first()
    if row is None or row.budget is None:
        return None
    return int(row.budget), int(row.spent)


async def _refund_budget(book: Book, key_id: str | None, amount: int) -> None:
    """A settled or released hold gives back to its key's budget what the task did not cost."""
    if key_id is None or amount == 0:
        return
    budget = await _lock_budget(book, key_id)
    if budget is not None:
        await book.conn.execute(_SET_SPENT, {"_k": key_id, "_spent": max(0, budget[1] - amount)})


async def _lock_hold(book: Book, task_id: str) -> Any:
    row = (await book.conn.execute(_LOCK_HOLD, {"task_id": task_id})).first()
    if row is None:
        raise NotFound(f"No reservation for task {task_id!r}.", param="task_id")
    return row


async def settle(book: Book, task_id: str, payouts: Mapping[str, int], treasury_fee: int) -> Settlement:
    task_id = acc.ref(task_id, "task_id")
    row = await _lock_hold(book, task_id)
    session_id, state, reserved, fee, released, paid = (
        row.session_id,
        row.state,
        row.amount,
        row.fee,
        row.released,
        row.payouts,
    )
    if state == SETTLED:
        stored = {a: int(v) for a, v in json.loads(paid or "{}").items()}
        return Settlement(
            task_id, session_id, reserved, frozen_payouts(stored), fee or 0, released or 0, True
        )
    if state == RELEASED:
        raise LedgerError(f"task {task_id!r} was released (failed); it cannot be settled", param="task_id")
    pay: dict[str, int] = {}
    for miner, value in payouts.items():
        account = acc.holder(miner)
        pay[account] = pay.get(account, 0) + acc.amount(value, f"payout to {miner}", allow_zero=True)
    pay = {a: v for a, v in pay.items() if v}
    fee = acc.amount(treasury_fee, "treasury_fee", allow_zero=True)
    charged = sum(pay.values()) + fee
    if charged > reserved:
        raise InsufficientFunds(
            f"Settlement of task {task_id} ({cor(charged)}) exceeds its reservation of {cor(reserved)}."
        )
    rest = reserved - charged
    # Mark the hold settled first: its row is ours already, and this keeps the account rows locked for less time.
    payouts_json = json.dumps({a: str(v) for a, v in sorted(pay.items())})
    await book.conn.execute(
        _CLOSE_HOLD,
        {
            "_task": task_id,
            "_state": SETTLED,
            "_fee": fee,
            "_released": rest,
            "_payouts": payouts_json,
            "_at": book.now_us,
        },
    )
    await _refund_budget(book, row.key_id, rest)
    hold, escrow = acc.hold_account(task_id), acc.escrow_account(session_id)
    await book.lock([hold, escrow, *pay, *([TREASURY] if fee else [])])
    await book.post(
        EntrySpec(
            EntryKind.PAYOUT,
            {hold: -sum(pay.values()), **pay},
            "task settled",
            session_id=session_id,
            task_id=task_id,
        ),
        EntrySpec(
            EntryKind.CHARGE,
            {hold: -fee, TREASURY: fee},
            "protocol fee",
            session_id=session_id,
            task_id=task_id,
        ),
        EntrySpec(
            EntryKind.RELEASE,
            {hold: -rest, escrow: rest},
            "unused reservation",
            session_id=session_id,
            task_id=task_id,
        ),
    )
    return Settlement(task_id, session_id, reserved, frozen_payouts(pay), fee, rest)


async def release(book: Book, task_id: str, reason: str) -> int:
    task_id = acc.ref(task_id, "task_id")
    row = await _lock_hold(book, task_id)
    session_id, state, reserved = str(row.session_id), str(row.state), int(row.amount)
    if state == RELEASED:
        return 0
    if state == SETTLED:
        raise LedgerError(f"task {task_id!r} is already settled; nothing to release", param="task_id")
    await book.conn.execute(
        _CLOSE_HOLD,
        {
            "_task": task_id,
            "_state": RELEASED,
            "_fee": 0,
            "_released": reserved,
            "_payouts": None,
            "_at": book.now_us,
        },
    )
    await _refund_budget(book, row.key_id, reserved)
    hold, escrow = acc.hold_account(task_id), acc.escrow_account(session_id)
    await book.lock([hold, escrow])
    spec = EntrySpec(
        EntryKind.RELEASE, {hold: -reserved, escrow: reserved}, reason, session_id=session_id, task_id=task_id
    )
    await book.post(spec)
    return reserved


_HELD = (
    select(holds.c.task_id, holds.c.session_id, holds.c.amount, holds.c.created_us)
    .where(holds.c.state == HELD)
    .order_by(holds.c.created_us, holds.c.task_id)
)


async def held(conn: Any) -> list[HoldView]:
    """Every hold still reserved (neither settled nor released), oldest first."""
    return [
        HoldView(r.task_id, r.session_id, int(r.amount), from_us(r.created_us))
        for r in await conn.execute(_HELD)
    ]
