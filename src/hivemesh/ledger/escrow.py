"""Sessions: escrow funding and closing, and the list of holds still reserved (per-task holds: ``holds.py``).

Each function runs inside the caller's write transaction (a ``Book``). It locks its own row first (the
session), then the accounts, then posts: the order ``book.py`` prescribes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select, update

from hivemesh.errors import LedgerError, NotFound
from hivemesh.ledger import accounts as acc
from hivemesh.ledger.accounts import EntryKind, from_us
from hivemesh.ledger.book import Book, EntrySpec
from hivemesh.ledger.holds import CLOSED, HELD, OPEN
from hivemesh.ledger.schema import holds, sessions
from hivemesh.ledger.views import HoldView

_LOCK_SESSION = (
    select(sessions.c.owner, sessions.c.state)
    .where(sessions.c.session_id == bindparam("session_id"))
    .with_for_update()
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
