"""The ledger's core guarantees on both back-ends: SQLite and a real PostgreSQL server (marked ``postgres``).

On PostgreSQL the concurrent tests are real races: each call is its own transaction on its own connection,
serialised only by row locks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from eth_utils.address import to_checksum_address
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from hivemesh.errors import AuthenticationFailed, InsufficientFunds, LedgerError, NotFound
from hivemesh.ledger import COR, TREASURY, Ledger
from hivemesh.ledger.schema import entries, postings


def addr(n: int) -> str:
    return str(to_checksum_address(f"0x{n:04x}" + "ab" * 18))


USER, MINERS = addr(1), [addr(100 + i) for i in range(4)]


@pytest.fixture(params=[1, 4], ids=["1-chain", "4-chains"])
async def ledger(request: pytest.FixtureRequest, ledger_url: str) -> AsyncIterator[Ledger]:
    led = await Ledger.open(ledger_url, chain_shards=request.param, pool_size=20)
    try:
        yield led
    finally:
        await led.close()


async def test_deposit_withdraw_and_refusal(ledger: Ledger) -> None:
    big = 10**40 + 1  # far beyond int64
    await ledger.deposit(USER, big)
    await ledger.withdraw(USER, 1)
    with pytest.raises(InsufficientFunds):
        await ledger.withdraw(USER, big)
    assert await ledger.balance(USER) == big - 1
    assert await ledger.totals() == big - 1
    assert (await ledger.verify()).ok


async def test_settle_pays_releases_and_is_idempotent(ledger: Ledger) -> None:
    await ledger.deposit(USER, 10 * COR)
    await ledger.fund_session("s1", USER, 5 * COR)
    await ledger.reserve("s1", "t1", 2 * COR)
    first = await ledger.settle("t1", {MINERS[0]: COR, MINERS[1]: COR // 2}, treasury_fee=COR // 10)
    again = await asyncio.gather(*(ledger.settle("t1", {MINERS[0]: COR}) for _ in range(5)))
    assert all(s == first and s.replayed for s in again)
    assert await ledger.balance(MINERS[0]) == COR
    assert await ledger.balance(TREASURY) == COR // 10
    assert await ledger.escrow_balance("s1") == 3 * COR + 4 * COR // 10
    assert (await ledger.verify()).ok


async def test_concurrent_reserves_never_overspend(ledger: Ledger) -> None:
    await ledger.deposit(USER, 100 * COR)
    await ledger.fund_session("s1", USER, 10 * COR)
    results = await asyncio.gather(
        *(ledger.reserve("s1", f"t{i}", 3 * COR) for i in range(20)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, InsufficientFunds) for r in results if r is not None)
    assert await ledger.escrow_balance("s1") == COR
    assert (await ledger.verify()).ok


async def test_two_ledger_instances_on_one_database_never_overspend(ledger: Ledger, ledger_url: str) -> None:
    """Like two router processes: no shared asyncio lock, only the database's locks."""
    await ledger.deposit(USER, 100 * COR)
    await ledger.fund_session("s1", USER, 10 * COR)
    other = await Ledger.open(ledger_url)
    try:
        results = await asyncio.gather(
            *((ledger if i % 2 else other).reserve("s1", f"t{i}", 2 * COR) for i in range(12)),
            return_exceptions=True,
        )
    finally:
        await other.close()
    assert sum(r is None for r in results) == 5
    assert await ledger.escrow_balance("s1") == 0


async def test_many_concurrent_settlements_share_miners_without_deadlock(ledger: Ledger) -> None:
    await ledger.deposit(USER, 1000 * COR)
    for s in range(4):
        await ledger.fund_session(f"s{s}", USER, 100 * COR)

    async def task(i: int) -> None:
        await ledger.reserve(f"s{i % 4}", f"t{i}", COR)
        # Payees in varying order and overlap: a naive lock order would deadlock on PostgreSQL.
        payees = random.Random(i).sample(MINERS, 3)
        await ledger.settle(f"t{i}", {m: COR // 10 for m in payees}, treasury_fee=COR // 100)

    await asyncio.wait_for(asyncio.gather(*(task(i) for i in range(60))), timeout=120)
    assert sum([await ledger.balance(m) for m in MINERS]) == 60 * 3 * COR // 10
    assert await ledger.balance(TREASURY) == 60 * COR // 100
    assert await ledger.totals() == 1000 * COR
    report = await ledger.verify()
    assert report.ok, report.reason
    assert report.entries_checked == 1 + 4 + 60 * 4


async def test_slash_includes_stake_in_cooldown(ledger: Ledger) -> None:
    miner = MINERS[0]
    await ledger.deposit(miner, 4_000 * COR)
    await ledger.stake(miner, 4_000 * COR, pool=3)
    await ledger.request_unstake(miner, 2_000 * COR)
    with pytest.raises(LedgerError, match="cooldown"):
        await ledger.complete_unstake(miner)
    assert await ledger.slash(miner, Fraction(1, 2), "forged result", task_id="t9") == 2_000 * COR
    assert await ledger.staked(miner) == 1_000 * COR
    assert (await ledger.account(miner)).unstaking.amount == 1_000 * COR
    assert await ledger.balance(TREASURY) == 2_000 * COR


async def test_verify_names_edited_and_deleted_entries(ledger: Ledger, ledger_url: str) -> None:
    await ledger.deposit(USER, 10 * COR)
    await ledger.fund_session("s1", USER, 5 * COR)
    for i in range(3):
        await ledger.reserve("s1", f"t{i}", COR)
        await ledger.settle(f"t{i}", {MINERS[0]: COR // 2})
    assert (await ledger.verify()).ok
    engine = create_async_engine(ledger_url)
    try:
        async with engine.begin() as conn:
            payout = (
                await conn.execute(
                    select(entries.c.id).where(entries.c.kind == "payout", entries.c.task_id == "t1")
                )
            ).scalar_one()
            await conn.execute(
                update(postings).where(postings.c.entry_id == payout, postings.c.delta > 0).values(delta=COR)
            )
        report = await ledger.verify()
        assert (report.ok, report.first_bad_entry) == (False, payout)

        async with engine.begin() as conn:
            await conn.execute(
                update(postings)
                .where(postings.c.entry_id == payout, postings.c.delta > 0)
                .values(delta=COR // 2)
            )
        assert (await ledger.verify()).ok  # restoring the amount restores the hash

        async with engine.begin() as conn:
            release = (  # the next entry on the same chain: a task's entries share a shard
                await conn.execute(
                    select(entries.c.id).where(entries.c.kind == "release", entries.c.task_id == "t1")
                )
            ).scalar_one()
            await conn.execute(delete(postings).where(postings.c.entry_id == payout))
            await conn.execute(delete(entries).where(entries.c.id == payout))
        report = await ledger.verify()
        assert (report.ok, report.first_bad_entry) == (False, release)
        assert "missing" in report.reason
    finally:
        await engine.dispose()


async def test_keys(ledger: Ledger) -> None:
    key_id, secret = await ledger.create_key(USER, rpm=10, expires_at=datetime.now(UTC) + timedelta(days=1))
    assert (await ledger.authenticate(secret)).account == USER
    await ledger.revoke(key_id)
    with pytest.raises(AuthenticationFailed):
        await ledger.authenticate(secret)


async def test_opening_concurrently_migrates_once(ledger_url: str) -> None:
    ledgers = await asyncio.gather(*(Ledger.open(ledger_url, chain_shards=2) for _ in range(4)))
    for led in ledgers:
        await led.close()


async def test_random_concurrent_programs_conserve_money(ledger: Ledger) -> None:
    """A seeded random mix of calls fired at once: totals hold, nothing negative, every chain verifies."""
    rng = random.Random(1234)
    users = [addr(10 + i) for i in range(3)]
    for u in users:
        await ledger.deposit(u, 50 * COR)
    deposited, withdrawn = 150 * COR, 0
    for wave in range(4):
        calls = []
        for _ in range(40):
            u, m, s, t = (
                rng.choice(users),
                rng.choice(MINERS),
                f"s{rng.randrange(3)}",
                f"w{wave}t{rng.randrange(12)}",
            )
            owner = users[int(s[1])]
            amount = rng.choice([1, COR, 3 * COR])
            calls.append(
                rng.choice(
                    [
                        ("fund", 0, lambda s=s, o=owner, a=amount: ledger.fund_session(s, o, a)),
                        ("reserve", 0, lambda s=s, t=t, a=amount: ledger.reserve(s, t, a)),
                        ("settle", 0, lambda t=t, m=m, a=amount: ledger.settle(t, {m: a // 2}, a // 10)),
                        ("release", 0, lambda t=t: ledger.release(t)),
                        ("deposit", amount, lambda u=u, a=amount: ledger.deposit(u, a)),
                        ("withdraw", amount, lambda m=m, a=amount: ledger.withdraw(m, a)),
                        ("stake", 0, lambda u=u, a=amount: ledger.stake(u, a, pool=0)),
                        ("slash", 0, lambda u=u: ledger.slash(u, 0.5, "random")),
                    ]
                )
            )
        results = await asyncio.gather(*(fn() for _, _, fn in calls), return_exceptions=True)
        for (kind, amount, _), r in zip(calls, results, strict=True):
            if isinstance(r, BaseException):
                assert isinstance(r, LedgerError | NotFound) and r.code != "ledger_integrity", repr(r)
            elif kind == "deposit":
                deposited += amount
            elif kind == "withdraw":
                withdrawn += amount
    assert await ledger.totals() == deposited - withdrawn
    report = await ledger.verify()
    assert report.ok, report.reason


async def test_racing_to_create_the_same_account_loses_nothing(ledger: Ledger, ledger_url: str) -> None:
    """Concurrent first deposits to one new address: on PostgreSQL some transactions find the account created
    under them and are re-run from the start; every deposit lands exactly once."""
    other = await Ledger.open(ledger_url)
    try:
        for n in range(3):
            fresh = addr(500 + n)
            await asyncio.gather(*((ledger if i % 2 else other).deposit(fresh, COR) for i in range(10)))
            assert await ledger.balance(fresh) == 10 * COR
    finally:
        await other.close()
    assert (await ledger.verify()).ok
