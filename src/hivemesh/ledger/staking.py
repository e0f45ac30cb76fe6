"""Node stake: staking, the unstake cooldown, slashing and epoch rewards.

A node's active stake sits in ``stake:<node>``; ``request_unstake`` moves some of it to ``unstaking:<node>``,
where it no longer counts toward a pool but can still be slashed until the cooldown ends and
``complete_unstake`` returns it. A new request adds to the amount in cooldown and restarts the cooldown for all
of it. Each function runs inside the caller's write transaction (a ``Book``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction

from sqlalchemy import select, update

from hivemesh.errors import LedgerError, NotFound
from hivemesh.ledger import accounts as acc
from hivemesh.ledger.accounts import REWARD_POOL, TREASURY, EntryKind, from_us
from hivemesh.ledger.book import Book, EntrySpec, cor
from hivemesh.ledger.schema import rewards, stakes
from hivemesh.ledger.views import StakePools


async def stake(book: Book, pools: StakePools, node: str, amount: int, pool: int) -> int:
    node, amount = acc.address(node), acc.amount(amount)
    pools.minimum(pool)
    await book.conn.execute(
        book.db.insert(stakes).values(node=node, pool=pool).on_conflict_do_nothing(index_elements=["node"])
    )
    await book.conn.execute(select(stakes.c.node).where(stakes.c.node == node).with_for_update())
    await book.conn.execute(update(stakes).where(stakes.c.node == node).values(pool=pool))
    staked = acc.stake_account(node)
    await book.lock([node, staked])
    spec = EntrySpec(EntryKind.STAKE, {node: -amount, staked: amount}, f"stake for pool {pool}", node=node)
    return (await book.post(spec))[0]


async def _lock_stake_row(book: Book, node: str) -> int | None:
    row = (
        await book.conn.execute(
            select(stakes.c.unstake_available_us).where(stakes.c.node == node).with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound(f"node {node} has never staked", param="node")
    return None if row.unstake_available_us is None else int(row.unstake_available_us)


async def request_unstake(book: Book, cooldown: timedelta, node: str, amount: int) -> datetime:
    node, amount = acc.address(node), acc.amount(amount)
    await _lock_stake_row(book, node)
    staked, cooling = acc.stake_account(node), acc.unstaking_account(node)
    await book.lock([staked, cooling])
    available_us = book.now_us + cooldown // timedelta(microseconds=1)
    spec = EntrySpec(
        EntryKind.UNSTAKE, {staked: -amount, cooling: amount}, "unstake requested: cooldown", node=node
    )
    await book.post(spec)
    await book.conn.execute(
        update(stakes).where(stakes.c.node == node).values(unstake_available_us=available_us)
    )
    return from_us(available_us)


async def complete_unstake(book: Book, node: str) -> int:
    node = acc.address(node)
    available_us = await _lock_stake_row(book, node)
    cooling = acc.unstaking_account(node)
    balances = await book.lock([cooling, node])
    amount = balances[cooling]
    if amount == 0 or available_us is None:
        raise LedgerError(f"node {node} has no stake in unstake cooldown", param="node")
    if book.now_us < available_us:
        left = timedelta(microseconds=available_us - book.now_us)
        raise LedgerError(
            f"unstake cooldown of {cor(amount)} for {node} ends at {from_us(available_us).isoformat()} "
            f"({left} from now)",
            param="node",
        )
    spec = EntrySpec(EntryKind.UNSTAKE, {cooling: -amount, node: amount}, "unstake completed", node=node)
    await book.post(spec)
    await book.conn.execute(update(stakes).where(stakes.c.node == node).values(unstake_available_us=None))
    return amount


async def slash(book: Book, node: str, share: Fraction, reason: str, task_id: str | None) -> int:
    """Take ``share`` of the node's active stake and of its stake in cooldown (each rounded down)."""
    node = acc.address(node)
    if task_id is not None:
        task_id = acc.ref(task_id, "task_id")
    staked, cooling = acc.stake_account(node), acc.unstaking_account(node)
    balances = await book.lock([staked, cooling, TREASURY])
    take_active = balances[staked] * share.numerator // share.denominator
    take_cooling = balances[cooling] * share.numerator // share.denominator
    total = take_active + take_cooling
    spec = EntrySpec(
        EntryKind.SLASH,
        {staked: -take_active, cooling: -take_cooling, TREASURY: total},
        reason,
        task_id=task_id,
        node=node,
        shard_key=node,
    )
    await book.post(spec)
    return total


async def reward(book: Book, account: str, amount: int, epoch: int, reason: str) -> int:
    """Pay ``amount`` from the reward pool; once per (account, epoch): a repeat returns the first entry id."""
    account, amount = acc.holder(account), acc.amount(amount)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise LedgerError(f"epoch must be a non-negative int, got {epoch!r}", param="epoch")
    claimed = (
        await book.conn.execute(
            book.db.insert(rewards)
            .values(account=account, epoch=epoch, amount=amount, entry_id=0)
            .on_conflict_do_nothing(index_elements=["account", "epoch"])
            .returning(rewards.c.account)
        )
    ).first()
    if claimed is None:
        row = (
            await book.conn.execute(
                select(rewards.c.amount, rewards.c.entry_id).where(
                    rewards.c.account == account, rewards.c.epoch == epoch
                )
            )
        ).one()
        if row.amount != amount:
            raise LedgerError(
                f"{account} was already rewarded {cor(row.amount)} for epoch {epoch}", param="epoch"
            )
        return int(row.entry_id)
    await book.lock([REWARD_POOL, account])
    spec = EntrySpec(EntryKind.REWARD, {REWARD_POOL: -amount, account: amount}, reason, epoch=epoch)
    entry_id = (await book.post(spec))[0]
    await book.conn.execute(
        update(rewards)
        .where(rewards.c.account == account, rewards.c.epoch == epoch)
        .values(entry_id=entry_id)
    )
    return entry_id


def check_stake(pools: StakePools, node: str, pool: int, active: int) -> None:
    need = pools.minimum(pool)
    if active < need:
        raise LedgerError(
            f"node {node} has {cor(active)} staked; pool {pool} requires at least {cor(need)}", param="node"
        )
