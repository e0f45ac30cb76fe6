"""Fixtures for the ledger unit tests: a fresh SQLite ledger per test, a controllable clock, addresses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from hivemesh.ledger import COR, Ledger, StakePools

from .ledger_helpers import FakeClock, addr

POOLS = StakePools({0: 0, 1: 1_000 * COR, 2: 2_000 * COR, 3: 4_000 * COR})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
async def ledger(db_path: Path, clock: FakeClock) -> AsyncIterator[Ledger]:
    led = await Ledger.open(
        f"sqlite+aiosqlite:///{db_path}", clock=clock, pools=POOLS, unstake_cooldown=timedelta(days=7)
    )
    try:
        yield led
    finally:
        await led.close()


@pytest.fixture
def user() -> str:
    return addr(1)


@pytest.fixture
def miner() -> str:
    return addr(100)


@pytest.fixture
def miner2() -> str:
    return addr(101)
