"""Account names, entry kinds and amounts: the vocabulary every other ledger module speaks.

An account is a string. User and node accounts are Ethereum addresses in checksum form; system accounts have
fixed names or a fixed prefix::

    world             the outside: deposits come from it, withdrawals go to it (the only account that may be < 0)
    treasury          protocol fees and slashed stake
    reward_pool       funded by deposits, pays epoch rewards
    stake:<addr>      a node's active stake
    unstaking:<addr>  stake in its unstake cooldown (still slashable)
    escrow:<session>  a session's prepaid funds
    hold:<task>       a reservation for one task, settled or released
"""

from __future__ import annotations

import re
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fractions import Fraction

from eth_utils.address import is_checksum_address, to_checksum_address

from hivemesh.errors import LedgerError

COR = 10**18
"""One COR in its smallest unit (18 decimals, like wei)."""

MAX_AMOUNT = 10**60
"""No single movement may exceed this: far above any real supply, far below NUMERIC(78,0)'s limit."""

WORLD = "world"
TREASURY = "treasury"
REWARD_POOL = "reward_pool"

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_REF = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,200}")


class EntryKind(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAW = "withdraw"
    STAKE = "stake"
    UNSTAKE = "unstake"
    ESCROW = "escrow"
    RESERVE = "reserve"
    RELEASE = "release"
    CHARGE = "charge"
    PAYOUT = "payout"
    SLASH = "slash"
    REWARD = "reward"


_CHECKSUMMED: OrderedDict[str, str] = OrderedDict()  # recent addresses -> checksum form (keccak costs ~20 µs)
_CHECKSUMMED_MAX = 4096


def address(value: str) -> str:
    """A user or node address in checksum form; a mixed-case address must already carry a valid checksum."""
    if isinstance(value, str) and (known := _CHECKSUMMED.get(value)) is not None:
        return known
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise LedgerError(
            f"{value!r} is not an account address (0x followed by 40 hex digits)", param="account"
        )
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise LedgerError(f"{value!r} has an invalid checksum", param="account")
    checksummed = str(to_checksum_address(value))
    _CHECKSUMMED[value] = checksummed
    if len(_CHECKSUMMED) > _CHECKSUMMED_MAX:
        _CHECKSUMMED.popitem(last=False)
    return checksummed


def ref(value: str, what: str) -> str:
    """A session or task id: 1-200 characters, no spaces, safe to embed in an account name."""
    if not isinstance(value, str) or not _REF.fullmatch(value):
        raise LedgerError(f"{what} {value!r} must be 1-200 characters of [A-Za-z0-9_.:@/+=-]", param=what)
    return value


def stake_account(node: str) -> str:
    return f"stake:{address(node)}"


def unstaking_account(node: str) -> str:
    return f"unstaking:{address(node)}"


def escrow_account(session_id: str) -> str:
    return f"escrow:{ref(session_id, 'session_id')}"


def hold_account(task_id: str) -> str:
    return f"hold:{ref(task_id, 'task_id')}"


def holder(account: str) -> str:
    """An account that may hold and send funds directly: an address, ``treasury`` or ``reward_pool``."""
    if account in (TREASURY, REWARD_POOL):
        return account
    return address(account)


def amount(value: int, what: str = "amount", *, allow_zero: bool = False) -> int:
    """Validate an amount in the smallest unit: an ``int`` (never a float or bool), positive, bounded."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerError(f"{what} must be an integer number of the smallest unit, got {value!r}", param=what)
    if value < 0 or (value == 0 and not allow_zero):
        raise LedgerError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value}", param=what)
    if value > MAX_AMOUNT:
        raise LedgerError(f"{what} {value} exceeds the ledger's limit of {MAX_AMOUNT}", param=what)
    return value


def fraction(value: Fraction | float) -> Fraction:
    """A slashing fraction in (0, 1]. Floats are read by their decimal text, so 0.1 means exactly 1/10."""
    if isinstance(value, bool) or not isinstance(value, Fraction | float | int):
        raise LedgerError(f"fraction must be a Fraction or float, got {value!r}", param="fraction")
    try:
        f = value if isinstance(value, Fraction) else Fraction(str(value))
    except (ValueError, OverflowError):
        raise LedgerError(f"fraction must be a finite number, got {value!r}", param="fraction") from None
    if not 0 < f <= 1:
        raise LedgerError(f"fraction must be in (0, 1], got {value}", param="fraction")
    return f


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(t: datetime) -> int:
    """A timezone-aware time as integer microseconds since the Unix epoch: exact, so hashes recompute."""
    if t.tzinfo is None:
        raise LedgerError("ledger times must be timezone-aware")
    return (t - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
