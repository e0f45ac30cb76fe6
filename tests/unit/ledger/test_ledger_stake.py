"""Stake, the unstake cooldown, slashing and rewards."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction

import pytest

from hivemesh.errors import InsufficientFunds, LedgerError, NotFound
from hivemesh.ledger import COR, REWARD_POOL, TREASURY, Ledger

from .ledger_helpers import FakeClock


async def test_stake_counts_toward_pools(ledger: Ledger, miner: str) -> None:
    await ledger.deposit(miner, 5_000 * COR)
    await ledger.stake(miner, 2_000 * COR, pool=2)
    assert await ledger.staked(miner) == 2_000 * COR
    assert await ledger.balance(miner) == 3_000 * COR
    await ledger.check_stake(miner, 1)
    await ledger.check_stake(miner, 2)
    with pytest.raises(LedgerError, match="has 2000 COR staked; pool 3 requires at least 4000 COR"):
        await ledger.check_stake(miner, 3)
    with pytest.raises(LedgerError, match="unknown stake pool"):
        await ledger.check_stake(miner, 9)
    with pytest.raises(InsufficientFunds):
        await ledger.stake(miner, 3_001 * COR, pool=3)
    assert (await ledger.account(miner)).pool == 2


async def test_unstake_only_after_the_cooldown(ledger: Ledger, miner: str, clock: FakeClock) -> None:
    await ledger.deposit(miner, 3_000 * COR)
    await ledger.stake(miner, 3_000 * COR, pool=2)
    available = await ledger.request_unstake(miner, 1_500 * COR)
    assert available == clock.now + timedelta(days=7)
    assert await ledger.staked(miner) == 1_500 * COR  # cooling stake no longer counts
    with pytest.raises(LedgerError, match="pool 2 requires"):
        await ledger.check_stake(miner, 2)
    view = await ledger.account(miner)
    assert view.unstaking == (1_500 * COR, available)

    clock.advance(timedelta(days=7) - timedelta(seconds=1))
    with pytest.raises(LedgerError, match=r"cooldown .* ends at"):
        await ledger.complete_unstake(miner)
    assert await ledger.balance(miner) == 0

    clock.advance(timedelta(seconds=1))
    assert await ledger.complete_unstake(miner) == 1_500 * COR
    assert await ledger.balance(miner) == 1_500 * COR
    assert (await ledger.account(miner)).unstaking == (0, None)
    with pytest.raises(LedgerError, match="no stake in unstake cooldown"):
        await ledger.complete_unstake(miner)


async def test_unstake_needs_stake(ledger: Ledger, miner: str) -> None:
    with pytest.raises(NotFound):
        await ledger.request_unstake(miner, COR)
    await ledger.deposit(miner, COR)
    await ledger.stake(miner, COR, pool=0)
    with pytest.raises(InsufficientFunds):
        await ledger.request_unstake(miner, 2 * COR)


async def test_slash_takes_a_share_of_active_and_cooling_stake_to_the_treasury(
    ledger: Ledger, miner: str, clock: FakeClock
) -> None:
    await ledger.deposit(miner, 4_000 * COR)
    await ledger.stake(miner, 4_000 * COR, pool=3)
    await ledger.request_unstake(miner, 1_000 * COR)  # trying to leave with the stake before the slash
    taken = await ledger.slash(miner, Fraction(1, 4), "wrong answer on a canary", task_id="t1")
    assert taken == 1_000 * COR
    assert await ledger.staked(miner) == 2_250 * COR
    assert (await ledger.account(miner)).unstaking.amount == 750 * COR
    assert await ledger.balance(TREASURY) == 1_000 * COR

    assert await ledger.slash(miner, 1.0, "caught forging") == 3_000 * COR
    assert await ledger.staked(miner) == 0
    clock.advance(timedelta(days=8))
    with pytest.raises(LedgerError, match="no stake in unstake cooldown"):
        await ledger.complete_unstake(miner)
    assert await ledger.totals() == 4_000 * COR
    assert (await ledger.verify()).ok


async def test_slash_rounds_down_and_reads_floats_as_decimals(ledger: Ledger, miner: str) -> None:
    await ledger.deposit(miner, 1_000)
    await ledger.stake(miner, 1_000, pool=0)
    # 0.1 means exactly 1/10, not the binary float's 0.1000000000000000055...
    assert await ledger.slash(miner, 0.1, "x") == 100
    assert await ledger.slash(miner, Fraction(1, 3), "x") == 300
    assert await ledger.slash(miner, 0.5, "nothing staked") == 300
    for bad in (0, 1.5, -0.1, float("nan"), float("inf")):
        with pytest.raises(LedgerError):
            await ledger.slash(miner, bad, "x")


async def test_slash_of_a_node_without_stake_is_zero(ledger: Ledger, miner: str) -> None:
    assert await ledger.slash(miner, 0.5, "never staked") == 0
    assert (await ledger.verify()).entries_checked == 0


async def test_reward_comes_from_the_pool_once_per_epoch(ledger: Ledger, miner: str) -> None:
    with pytest.raises(InsufficientFunds):
        await ledger.reward(miner, COR, epoch=1, reason="uptime")
    await ledger.deposit(REWARD_POOL, 10 * COR, reason="emission schedule")
    first = await ledger.reward(miner, COR, epoch=1, reason="uptime")
    assert await ledger.reward(miner, COR, epoch=1, reason="uptime") == first  # a retried epoch job
    with pytest.raises(LedgerError, match="already rewarded"):
        await ledger.reward(miner, 2 * COR, epoch=1)
    await ledger.reward(miner, COR, epoch=2)
    assert await ledger.balance(miner) == 2 * COR
    assert await ledger.balance(REWARD_POOL) == 8 * COR
    assert (await ledger.account(miner)).earned == 2 * COR
