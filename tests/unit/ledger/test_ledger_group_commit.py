"""Reserves, settlements and releases are group-committed: concurrent ones share a transaction, yet each is
checked on exactly the state the ones before it left, and fails alone."""

from __future__ import annotations

import asyncio

import pytest

from hivemesh.errors import InsufficientFunds, LedgerError, NotFound
from hivemesh.ledger import COR, Ledger

from .ledger_helpers import addr


async def test_concurrent_reserves_never_overspend_and_share_commits(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user, 100 * COR)
    await ledger.fund_session("s1", user, 10 * COR)
    batches = ledger._holds.batches
    results = await asyncio.gather(
        *(ledger.reserve("s1", f"t{i}", COR) for i in range(25)), return_exceptions=True
    )
    ok = [r for r in results if r is None]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(ok) == 10 and len(refused) == 15  # exactly what the escrow holds, in submission order
    assert all(r is None for r in results[:10])
    assert await ledger.escrow_balance("s1") == 0
    assert ledger._holds.batches - batches < 25  # commits were shared
    assert (await ledger.verify()).ok


async def test_a_failing_operation_fails_alone(ledger: Ledger, user: str, miner: str) -> None:
    await ledger.deposit(user, 100 * COR)
    await ledger.fund_session("s1", user, 10 * COR)
    await ledger.reserve("s1", "t0", 2 * COR)
    results = await asyncio.gather(
        ledger.settle("t0", {miner: COR}, treasury_fee=COR // 10),
        ledger.settle("nope", {miner: COR}),  # no such hold
        ledger.reserve("s1", "t1", 3 * COR),
        ledger.settle("t1", {miner: 4 * COR}),  # more than its hold: refused, the hold stays
        ledger.reserve("s1", "t2", 100 * COR),  # more than the escrow
        ledger.reserve("s1", "t1", 5 * COR),  # the same task with another amount
        ledger.release("t1", reason="x" * 1001),  # a bad reason
        ledger.release("t1"),
        ledger.settle("t1", {miner: COR}),  # released just before, in the same batch
        return_exceptions=True,
    )
    assert results[0].charged == COR + COR // 10  # type: ignore[union-attr]
    assert isinstance(results[1], NotFound)
    assert results[2] is None
    assert isinstance(results[3], InsufficientFunds)
    assert isinstance(results[4], InsufficientFunds)
    assert isinstance(results[5], LedgerError) and "different reservation" in results[5].message
    assert isinstance(results[6], LedgerError) and "reason" in results[6].message
    assert results[7] == 3 * COR
    assert isinstance(results[8], LedgerError) and "released" in results[8].message
    assert await ledger.balance(miner) == COR
    assert await ledger.escrow_balance("s1") == 10 * COR - 2 * COR + (2 * COR - COR - COR // 10)
    assert (await ledger.verify()).ok


async def test_top_ups_from_the_owner_take_exactly_the_shortfalls(ledger: Ledger) -> None:
    owner = addr(7)
    await ledger.deposit(owner, 10 * COR)
    results = await asyncio.gather(
        *(ledger.reserve("default", f"t{i}", 3 * COR, top_up_from=owner) for i in range(4)),
        return_exceptions=True,
    )
    assert results[:3] == [None, None, None] and isinstance(results[3], InsufficientFunds)
    assert await ledger.balance(owner) == COR
    assert await ledger.escrow_balance("default") == 0
    assert (await ledger.verify()).ok


async def test_a_cancelled_caller_does_not_undo_its_reservation(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    call = asyncio.ensure_future(ledger.reserve("s1", "t1", 2 * COR))
    await asyncio.sleep(0)  # submitted to the group commit
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await ledger.reserve("s1", "t1", 2 * COR)  # a retry of the same reservation: nothing more is held
    assert await ledger.escrow_balance("s1") == 3 * COR
    assert [h.task_id for h in await ledger.held()] == ["t1"]
