"""Deposits, withdrawals, sessions, reservations and settlement on SQLite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hivemesh.errors import InsufficientFunds, LedgerError, NotFound
from hivemesh.ledger import COR, TREASURY, WORLD, Ledger
from hivemesh.ledger.book import Book, RetryTransaction

from .ledger_helpers import addr, bad_checksum


async def test_deposit_then_withdraw_moves_money_to_and_from_world(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user, 10 * COR, reason="card top-up")
    await ledger.withdraw(user, 3 * COR)
    assert await ledger.balance(user) == 7 * COR
    assert await ledger.balance(WORLD) == -7 * COR
    assert await ledger.totals() == 7 * COR
    assert (await ledger.verify()).ok


async def test_withdrawing_more_than_the_balance_is_refused_and_changes_nothing(
    ledger: Ledger, user: str
) -> None:
    await ledger.deposit(user, 5 * COR)
    with pytest.raises(InsufficientFunds, match=r"Insufficient funds in 0x.*holds 5 COR.*needs 6 COR") as e:
        await ledger.withdraw(user, 6 * COR)
    assert e.value.status == 402
    assert await ledger.balance(user) == 5 * COR
    assert await ledger.totals() == 5 * COR
    assert (await ledger.verify()).entries_checked == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10", 10**61])
async def test_amounts_must_be_positive_bounded_ints(ledger: Ledger, user: str, bad: Any) -> None:
    with pytest.raises(LedgerError):
        await ledger.deposit(user, bad)
    assert await ledger.totals() == 0


async def test_huge_amounts_are_exact(ledger: Ledger, user: str) -> None:
    big = 123_456_789 * 10**30 + 7  # far beyond 2**63: SQLite's NUMERIC affinity would round this
    await ledger.deposit(user, big)
    await ledger.withdraw(user, 1)
    assert await ledger.balance(user) == big - 1
    assert await ledger.totals() == big - 1
    assert (await ledger.verify()).ok


async def test_addresses_are_normalised_to_one_account(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user.lower(), COR)
    await ledger.deposit(user.upper().replace("0X", "0x"), COR)
    assert await ledger.balance(user) == 2 * COR
    with pytest.raises(LedgerError, match="checksum"):
        await ledger.deposit(bad_checksum(user), COR)
    with pytest.raises(LedgerError):
        await ledger.deposit("escrow:s1", COR)  # system accounts fill only through their own operations


async def test_reserve_beyond_escrow_is_refused(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 2 * COR)
    await ledger.reserve("s1", "t1", 1 * COR)
    with pytest.raises(
        InsufficientFunds, match=r"Session s1 has 1 COR left in escrow; task t2 needs 1\.5 COR"
    ):
        await ledger.reserve("s1", "t2", 3 * COR // 2)
    assert await ledger.escrow_balance("s1") == 1 * COR
    assert await ledger.balance("hold:t1") == 1 * COR
    assert await ledger.balance("hold:t2") == 0
    with pytest.raises(NotFound):
        await ledger.settle("t2", {})  # the refused reservation left no row behind


async def test_concurrent_reservations_never_overspend(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 10 * COR)
    results = await asyncio.gather(
        *(ledger.reserve("s1", f"t{i}", 3 * COR) for i in range(8)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, InsufficientFunds) for r in results if r is not None)
    assert await ledger.escrow_balance("s1") == 1 * COR


async def test_reserve_is_idempotent_for_the_same_request_only(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", COR)
    await ledger.reserve("s1", "t1", COR)  # a retry
    assert await ledger.escrow_balance("s1") == 4 * COR
    with pytest.raises(LedgerError, match="different reservation"):
        await ledger.reserve("s1", "t1", 2 * COR)


async def test_settle_pays_miners_and_fee_and_releases_the_rest(
    ledger: Ledger, user: str, miner: str, miner2: str
) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)
    s = await ledger.settle("t1", {miner: COR // 2, miner2: COR // 4}, treasury_fee=COR // 10)
    assert dict(s.payouts) == {miner: COR // 2, miner2: COR // 4}
    assert (s.reserved, s.treasury_fee, s.released, s.charged) == (
        2 * COR,
        COR // 10,
        115 * COR // 100,
        85 * COR // 100,
    )
    assert await ledger.balance(miner) == COR // 2
    assert await ledger.balance(miner2) == COR // 4
    assert await ledger.balance(TREASURY) == COR // 10
    assert await ledger.balance("hold:t1") == 0
    assert await ledger.escrow_balance("s1") == 3 * COR + s.released
    assert (await ledger.account(miner)).earned == COR // 2
    assert await ledger.totals() == 10 * COR
    assert (await ledger.verify()).ok


async def test_settling_twice_is_a_no_op_returning_the_first_result(
    ledger: Ledger, user: str, miner: str
) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)
    first = await ledger.settle("t1", {miner: COR})
    again = await ledger.settle("t1", {miner: 2 * COR}, treasury_fee=1)
    both = await asyncio.gather(ledger.settle("t1", {miner: COR}), ledger.settle("t1", {miner: COR}))
    assert again == first and all(s == first for s in both)
    assert again.replayed and not first.replayed
    assert await ledger.balance(miner) == COR
    assert await ledger.escrow_balance("s1") == 4 * COR
    assert (await ledger.verify()).entries_checked == 5  # deposit, escrow, reserve, payout, release


async def test_concurrent_first_settlements_pay_once(ledger: Ledger, user: str, miner: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)
    results = await asyncio.gather(*(ledger.settle("t1", {miner: COR}) for _ in range(5)))
    assert sum(not r.replayed for r in results) == 1
    assert await ledger.balance(miner) == COR


async def test_settlement_cannot_exceed_the_reservation(ledger: Ledger, user: str, miner: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", COR)
    with pytest.raises(InsufficientFunds, match="exceeds its reservation"):
        await ledger.settle("t1", {miner: COR}, treasury_fee=1)
    with pytest.raises(LedgerError):
        await ledger.settle("t1", {miner: -1})
    assert await ledger.balance("hold:t1") == COR
    assert (await ledger.settle("t1", {miner: COR})).released == 0


async def test_release_returns_the_whole_hold_once(ledger: Ledger, user: str, miner: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)
    assert await ledger.release("t1") == 2 * COR
    assert await ledger.release("t1") == 0
    assert await ledger.escrow_balance("s1") == 5 * COR
    with pytest.raises(LedgerError, match="released"):
        await ledger.settle("t1", {miner: 1})
    await ledger.reserve("s1", "t2", COR)
    await ledger.settle("t2", {})
    with pytest.raises(LedgerError, match="already settled"):
        await ledger.release("t2")
    with pytest.raises(NotFound):
        await ledger.release("nope")


async def test_close_session_refunds_and_refuses_while_tasks_are_in_flight(ledger: Ledger, user: str) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)
    with pytest.raises(LedgerError, match="still has 1 task"):
        await ledger.close_session("s1", user)
    await ledger.release("t1")
    assert await ledger.close_session("s1", user) == 5 * COR
    assert await ledger.close_session("s1", user) == 0
    assert await ledger.balance(user) == 10 * COR
    with pytest.raises(LedgerError, match="closed"):
        await ledger.fund_session("s1", user, COR)
    with pytest.raises(LedgerError, match="closed"):
        await ledger.reserve("s1", "t9", 1)


async def test_a_session_belongs_to_its_first_funder(ledger: Ledger, user: str) -> None:
    other = addr(2)
    await ledger.deposit(user, COR)
    await ledger.deposit(other, COR)
    await ledger.fund_session("s1", user, COR // 2)
    with pytest.raises(LedgerError, match="belongs to"):
        await ledger.fund_session("s1", other, COR // 2)
    with pytest.raises(NotFound):
        await ledger.reserve("s2", "t1", 1)


async def test_a_crash_mid_call_leaves_nothing_behind(
    ledger: Ledger, user: str, miner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)

    async def crash(self: Book, specs: Any) -> list[int]:
        raise RuntimeError("power cut after the balances were written")

    monkeypatch.setattr(Book, "_journal", crash)
    with pytest.raises(RuntimeError):
        await ledger.settle("t1", {miner: COR})
    monkeypatch.undo()
    assert await ledger.balance(miner) == 0
    assert await ledger.balance("hold:t1") == 2 * COR
    assert (await ledger.verify()).ok
    assert not (await ledger.settle("t1", {miner: COR})).replayed  # the hold was never marked settled


async def test_account_view(ledger: Ledger, miner: str) -> None:
    view = await ledger.account(miner)
    assert (view.balance, view.staked, view.unstaking.amount, view.earned, view.pool) == (0, 0, 0, 0, None)


async def test_a_transaction_the_database_wants_retried_runs_again_from_the_start(
    ledger: Ledger, user: str, miner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)
    original, calls = Book.lock, 0

    async def flaky(self: Book, names: Any, **kw: Any) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryTransaction("another transaction created an account first")
        return await original(self, names, **kw)

    monkeypatch.setattr(Book, "lock", flaky)
    settlement = await ledger.settle("t1", {miner: COR})
    assert calls == 2 and not settlement.replayed  # the first attempt, hold update included, was rolled back
    assert await ledger.balance(miner) == COR
    assert (await ledger.verify()).entries_checked == 3 + 2


@pytest.mark.parametrize("reason", ["x" * 1001, "nul\x00byte", "lone \udc80 surrogate"])
async def test_reasons_are_bounded_text(ledger: Ledger, user: str, reason: str) -> None:
    with pytest.raises(LedgerError, match="reason"):
        await ledger.deposit(user, COR, reason=reason)
    await ledger.deposit(user, COR, reason="ünïcode is fine ✓")
    assert (await ledger.verify()).ok


@pytest.mark.parametrize(
    "url", ["sqlite:///x.db", "postgresql://h/db", "sqlite+aiosqlite:///:memory:", "mysql+aiomysql://h/db"]
)
async def test_only_sqlite_files_and_asyncpg_are_accepted(url: str) -> None:
    with pytest.raises(LedgerError, match=r"(?i)sqlite"):
        await Ledger.open(url)
