"""Reserve with top-up, key budgets and the list of open holds, on SQLite and PostgreSQL.

The top-up of a key's default session and the reserve are one transaction: concurrent requests never take
each other's top-up (no false "not enough balance") and never overspend the owner's balance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from eth_utils.address import to_checksum_address

from hivemesh.errors import InsufficientFunds, LedgerError
from hivemesh.ledger import COR, Ledger


def addr(n: int) -> str:
    return str(to_checksum_address(f"0x{n:04x}" + "cd" * 18))


USER, OTHER, MINER = addr(1), addr(2), addr(100)
SMALL = COR // 1000


@pytest.fixture(params=[1, 4], ids=["1-chain", "4-chains"])
async def ledger(request: pytest.FixtureRequest, ledger_url: str) -> AsyncIterator[Ledger]:
    led = await Ledger.open(ledger_url, chain_shards=request.param, pool_size=20)
    try:
        yield led
    finally:
        await led.close()


async def test_concurrent_top_up_reserves_all_succeed_while_the_account_can_pay(ledger: Ledger) -> None:
    await ledger.deposit(USER, 1_000 * COR)
    results = await asyncio.gather(
        *(ledger.reserve("default-1", f"t{i}", SMALL, top_up_from=USER) for i in range(32)),
        return_exceptions=True,
    )
    assert results == [None] * 32
    assert await ledger.escrow_balance("default-1") == 0  # topped up by exactly the shortfalls, in all
    assert await ledger.balance(USER) == 1_000 * COR - 32 * SMALL
    assert len(await ledger.held()) == 32
    assert (await ledger.verify()).ok


async def test_top_up_reserves_never_overspend_the_owner(ledger: Ledger) -> None:
    await ledger.deposit(USER, 5 * SMALL)
    results = await asyncio.gather(
        *(ledger.reserve("default-1", f"t{i}", SMALL, top_up_from=USER) for i in range(16)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 5
    assert all(isinstance(r, InsufficientFunds) for r in results if isinstance(r, BaseException))
    assert await ledger.balance(USER) == 0
    assert await ledger.escrow_balance("default-1") == 0
    assert await ledger.totals() == 5 * SMALL
    assert (await ledger.verify()).ok


async def test_top_up_uses_the_escrow_first_and_is_idempotent(ledger: Ledger) -> None:
    await ledger.deposit(USER, 10 * COR)
    await ledger.fund_session("s1", USER, 3 * COR)
    await ledger.reserve("s1", "t1", 2 * COR, top_up_from=USER)
    assert await ledger.balance(USER) == 7 * COR  # the escrow had enough: nothing topped up
    await ledger.reserve("s1", "t2", 2 * COR, top_up_from=USER)
    assert await ledger.balance(USER) == 6 * COR  # only the shortfall
    await ledger.reserve("s1", "t2", 2 * COR, top_up_from=USER)  # a retry moves nothing
    assert await ledger.balance(USER) == 6 * COR
    with pytest.raises(LedgerError):  # someone else's session is never topped up from another account
        await ledger.reserve("s1", "t3", COR, top_up_from=OTHER)
    assert (await ledger.verify()).ok


async def test_a_key_budget_counts_holds_and_charges_and_refunds_the_unused_part(ledger: Ledger) -> None:
    await ledger.deposit(USER, 10 * COR)
    key_id, _ = await ledger.create_key(USER, budget=3 * COR)
    await ledger.reserve("s1", "t1", 2 * COR, top_up_from=USER, key_id=key_id)
    with pytest.raises(InsufficientFunds) as ei:
        await ledger.reserve("s1", "t2", 2 * COR, top_up_from=USER, key_id=key_id)
    assert ei.value.code == "budget_exceeded"
    assert "budget" in ei.value.message
    await ledger.settle("t1", {MINER: COR // 2})  # cost 0.5 COR: 1.5 COR goes back to the budget
    await ledger.reserve("s1", "t2", 2 * COR, top_up_from=USER, key_id=key_id)  # 0.5 + 2 <= 3
    await ledger.release("t2")
    await ledger.reserve("s1", "t3", 2 * COR + COR // 2, top_up_from=USER, key_id=key_id)
    with pytest.raises(InsufficientFunds):
        await ledger.reserve("s1", "t4", 1, top_up_from=USER, key_id=key_id)
    unbudgeted, _ = await ledger.create_key(USER)
    await ledger.reserve("s1", "t5", COR, top_up_from=USER, key_id=unbudgeted)  # no budget: no cap
    assert (await ledger.verify()).ok


async def test_held_lists_only_open_holds(ledger: Ledger) -> None:
    await ledger.deposit(USER, 10 * COR)
    for t in ("a", "b", "c"):
        await ledger.reserve("s1", t, COR, top_up_from=USER)
    await ledger.settle("a", {MINER: COR // 2})
    await ledger.release("b")
    held = await ledger.held()
    assert [(h.task_id, h.session_id, h.amount) for h in held] == [("c", "s1", COR)]
