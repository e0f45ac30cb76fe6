"""Helpers shared by the ledger unit tests (imported by name: this directory is on sys.path under pytest)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from eth_utils.address import to_checksum_address


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def addr(n: int) -> str:
    """The n-th test address, in checksum form."""
    return str(to_checksum_address("0x" + hashlib.sha256(f"address {n}".encode()).hexdigest()[:40]))


def bad_checksum(address: str) -> str:
    """The same address with the case of one letter flipped: an invalid checksum."""
    i = next(i for i, c in enumerate(address) if i > 1 and c.isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1 :]
