"""Chain events mirrored into the local ledger: what others did on chain (deposits, withdrawals, stakes,
unstakes, slashes by other validators) becomes a journal entry here, so the hot path reads balances, stakes and
escrows locally, never from the chain.

Each mirrored entry's reason is ``chain:<tx hash>:<log index>``: applying an event twice finds its entry and
changes nothing. What the router itself sent (its settlement batches: fundings, settlements, closes, slashes) is
already in the journal and is not mirrored back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from hivemesh.ledger import accounts as acc
from hivemesh.ledger.accounts import REWARD_POOL, TREASURY, WORLD, EntryKind
from hivemesh.ledger.book import Book, EntrySpec
from hivemesh.ledger.schema import entries, stakes

MIRRORED = ("Deposited", "Withdrawn", "RewardPoolFunded", "Staked", "UnstakeRequested", "Unstaked", "Slashed")


@dataclass(frozen=True)
class ChainEvent:
    key: str  # chain:<tx hash>:<log index>
    name: str
    args: Mapping[str, Any]
    block: int


@dataclass(frozen=True)
class Origins:
    treasury: str  # the chain address whose balance is the ledger's ``treasury``
    batch_sender: str  # the SessionPayment contract: slashes it carried came from this router's journal


async def _stake_row(book: Book, node: str, *, pool: int | None = None, available_us: Any = ...) -> None:
    await book.conn.execute(
        book.db.insert(stakes)
        .values(node=node, pool=pool or 0)
        .on_conflict_do_nothing(index_elements=["node"])
    )
    await book.conn.execute(select(stakes.c.node).where(stakes.c.node == node).with_for_update())
    values: dict[str, Any] = {}
    if pool is not None:
        values["pool"] = pool
    if available_us is not ...:
        values["unstake_available_us"] = available_us
    if values:
        await book.conn.execute(update(stakes).where(stakes.c.node == node).values(**values))


def _holder(address: str, origins: Origins) -> str:
    return TREASURY if address.lower() == origins.treasury.lower() else acc.address(address)


async def apply(book: Book, ev: ChainEvent, origins: Origins) -> int | None:
    """Mirror one event inside the caller's transaction; return its entry id (the earlier one on a repeat), or
    None for an event that is not mirrored."""
    a = ev.args
    if ev.name not in MIRRORED or (ev.name == "Slashed" and a["by"].lower() == origins.batch_sender.lower()):
        return None
    seen = (await book.conn.execute(select(entries.c.id).where(entries.c.reason == ev.key))).scalar()
    if seen is not None:
        return int(seen)
    spec: EntrySpec
    if ev.name == "Deposited":
        who = _holder(a["account"], origins)
        spec = EntrySpec(EntryKind.DEPOSIT, {WORLD: -a["amount"], who: a["amount"]}, ev.key)
    elif ev.name == "Withdrawn":
        who = _holder(a["account"], origins)
        spec = EntrySpec(EntryKind.WITHDRAW, {who: -a["amount"], WORLD: a["amount"]}, ev.key)
    elif ev.name == "RewardPoolFunded":
        spec = EntrySpec(EntryKind.DEPOSIT, {WORLD: -a["amount"], REWARD_POOL: a["amount"]}, ev.key)
    else:
        node = acc.address(a["node"])
        staked, cooling = acc.stake_account(node), acc.unstaking_account(node)
        if ev.name == "Staked":
            await _stake_row(book, node, pool=int(a["pool"]))
            postings = {WORLD: -a["amount"], staked: a["amount"]}
            spec = EntrySpec(EntryKind.STAKE, postings, ev.key, node=node)
        elif ev.name == "UnstakeRequested":
            await _stake_row(book, node, available_us=int(a["available_at"]) * 1_000_000)
            spec = EntrySpec(
                EntryKind.UNSTAKE, {staked: -a["amount"], cooling: a["amount"]}, ev.key, node=node
            )
        elif ev.name == "Unstaked":
            await _stake_row(book, node, available_us=None)
            spec = EntrySpec(
                EntryKind.UNSTAKE, {cooling: -a["amount"], WORLD: a["amount"]}, ev.key, node=node
            )
        else:  # Slashed by another validator
            total = a["active"] + a["cooling"]
            postings = {staked: -a["active"], cooling: -a["cooling"], TREASURY: total}
            spec = EntrySpec(EntryKind.SLASH, postings, ev.key, node=node, shard_key=node)
    await book.lock(spec.postings)
    ids = await book.post(spec)
    return ids[0] if ids else None
