"""What the ledger hands back: small frozen dataclasses, no database types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from hivemesh.errors import LedgerError
from hivemesh.ledger.accounts import COR


class Unstaking(NamedTuple):
    amount: int  # stake in its cooldown: no longer counts for pools, still slashable
    available_at: datetime | None  # when complete_unstake may take it; None when amount is 0


@dataclass(frozen=True)
class AccountView:
    address: str
    balance: int  # spendable: may be withdrawn, staked, or used to fund sessions
    staked: int  # active stake (counts toward pools)
    unstaking: Unstaking
    earned: int  # lifetime total received as task payouts and epoch rewards
    pool: int | None  # the pool the node last staked for, if it ever staked


@dataclass(frozen=True)
class Settlement:
    """The outcome of settling one task. Settling again returns an equal object with ``replayed`` set."""

    task_id: str
    session_id: str
    reserved: int  # what the task's hold held
    payouts: Mapping[str, int]  # miner address -> amount paid
    treasury_fee: int
    released: int  # returned to the session's escrow
    replayed: bool = field(default=False, compare=False)

    @property
    def charged(self) -> int:
        """What the session paid for the task: payouts plus fee."""
        return sum(self.payouts.values()) + self.treasury_fee


@dataclass(frozen=True)
class HoldView:
    """A reservation still held for a task: neither settled nor released."""

    task_id: str
    session_id: str
    amount: int
    created_at: datetime


def frozen_payouts(payouts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(sorted(payouts.items())))


_DEFAULT_POOLS = {0: 0, 1: 1_000 * COR, 2: 2_000 * COR, 3: 4_000 * COR}


@dataclass(frozen=True)
class StakePools:
    """Minimum active stake a node needs to serve in each pool (pool number -> amount)."""

    minimums: Mapping[int, int] = field(default_factory=lambda: MappingProxyType(dict(_DEFAULT_POOLS)))

    def minimum(self, pool: int) -> int:
        if isinstance(pool, bool) or not isinstance(pool, int) or pool not in self.minimums:
            raise LedgerError(f"unknown stake pool {pool!r}; pools are {sorted(self.minimums)}", param="pool")
        return self.minimums[pool]
