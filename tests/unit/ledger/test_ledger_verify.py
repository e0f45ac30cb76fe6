"""``verify`` finds direct edits of the database and names the first bad entry."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivemesh.ledger import COR, Ledger

from .ledger_helpers import FakeClock


def tamper(db_path: Path, *statements: str) -> None:
    """Edit the database behind the ledger's back, as an attacker with file access would."""
    with sqlite3.connect(db_path) as conn:
        for sql in statements:
            conn.execute(sql)


def entry_ids(db_path: Path, where: str = "1=1") -> list[int]:
    with sqlite3.connect(db_path) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM entries WHERE {where} ORDER BY id")]


@pytest.fixture(params=[1, 3], ids=["1-chain", "3-chains"])
async def busy(request: pytest.FixtureRequest, db_path: Path, clock: FakeClock) -> AsyncIterator[Ledger]:
    """A ledger with a dozen entries across several accounts, tasks and (with 3 shards) chains."""
    led = await Ledger.open(f"sqlite+aiosqlite:///{db_path}", clock=clock, chain_shards=request.param)
    user, miner = "0x" + "11" * 20, "0x" + "22" * 20
    await led.deposit(user, 100 * COR)
    await led.fund_session("s1", user, 50 * COR)
    for i in range(4):
        await led.reserve("s1", f"t{i}", 2 * COR)
        await led.settle(f"t{i}", {miner: COR}, treasury_fee=COR // 10)
    await led.withdraw(user, 10 * COR)
    try:
        yield led
    finally:
        await led.close()


async def test_an_untouched_ledger_verifies(busy: Ledger) -> None:
    report = await busy.verify()
    assert report.ok, report.reason
    assert report.entries_checked == 2 + 4 * 4 + 1
    assert report.first_bad_entry is None


async def test_editing_one_posting_amount_names_its_entry(busy: Ledger, db_path: Path) -> None:
    [target] = entry_ids(db_path, "kind = 'payout' AND task_id = 't2'")
    tamper(db_path, f"UPDATE postings SET delta = '{2 * COR}' WHERE entry_id = {target} AND delta = '{COR}'")
    report = await busy.verify()
    assert not report.ok
    assert report.first_bad_entry == target
    assert "hash mismatch" in report.reason


async def test_editing_a_balanced_pair_of_postings_is_still_caught(busy: Ledger, db_path: Path) -> None:
    [target] = entry_ids(db_path, "kind = 'payout' AND task_id = 't1'")
    tamper(
        db_path,
        f"UPDATE postings SET delta = '{5 * COR}' WHERE entry_id = {target} AND delta = '{COR}'",
        f"UPDATE postings SET delta = '-{5 * COR}' WHERE entry_id = {target} AND delta = '-{COR}'",
    )
    report = await busy.verify()
    assert (report.ok, report.first_bad_entry) == (False, target)


async def test_editing_a_reason_names_the_entry(busy: Ledger, db_path: Path) -> None:
    target = entry_ids(db_path)[0]
    tamper(db_path, f"UPDATE entries SET reason = 'nothing to see' WHERE id = {target}")
    report = await busy.verify()
    assert (report.ok, report.first_bad_entry) == (False, target)


async def test_deleting_an_entry_names_the_entry_after_the_gap(busy: Ledger, db_path: Path) -> None:
    [victim] = entry_ids(db_path, "kind = 'release' AND task_id = 't1'")
    [successor] = entry_ids(
        db_path,
        f"shard = (SELECT shard FROM entries WHERE id = {victim}) "
        f"AND seq = (SELECT seq + 1 FROM entries WHERE id = {victim})",
    )
    tamper(
        db_path, f"DELETE FROM postings WHERE entry_id = {victim}", f"DELETE FROM entries WHERE id = {victim}"
    )
    report = await busy.verify()
    assert not report.ok
    assert report.first_bad_entry == successor
    assert "missing" in report.reason


async def test_deleting_the_newest_entry_names_it(busy: Ledger, db_path: Path) -> None:
    victim = entry_ids(db_path)[-1]
    tamper(
        db_path, f"DELETE FROM postings WHERE entry_id = {victim}", f"DELETE FROM entries WHERE id = {victim}"
    )
    report = await busy.verify()
    assert (report.ok, report.first_bad_entry) == (False, victim)
    assert "chain head" in report.reason


async def test_editing_a_stored_balance_is_caught(busy: Ledger, db_path: Path) -> None:
    tamper(db_path, "UPDATE accounts SET balance = '1' WHERE address = 'treasury'")
    report = await busy.verify()
    assert not report.ok
    assert "stored balance of treasury is 1" in report.reason


async def test_the_first_of_several_bad_entries_is_named(busy: Ledger, db_path: Path) -> None:
    ids = entry_ids(db_path)
    tamper(db_path, *(f"UPDATE entries SET ts_us = ts_us + 1 WHERE id = {i}" for i in (ids[9], ids[4])))
    assert (await busy.verify()).first_bad_entry == ids[4]
