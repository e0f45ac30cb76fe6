"""Signed checkpoints: a history rewritten with every hash and head recomputed passes the chain check alone, and
fails against the router's last signed checkpoint, which ``verify`` names."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivemesh.errors import LedgerIntegrityError
from hivemesh.identity import Identity
from hivemesh.ledger import COR, Ledger
from hivemesh.ledger.chain import GENESIS, EntryRecord, entry_hash

from .ledger_helpers import FakeClock, addr

USER, MINER = addr(1), addr(100)


def rewrite_history(db_path: Path, entry_id: int, extra: int) -> None:
    """An attacker with write access: credit ``extra`` more to the receiving account of one entry (balances
    adjusted to match), then recompute every entry's hash, every link and every chain head."""
    with sqlite3.connect(db_path) as db:
        postings = db.execute(
            "SELECT id, account, delta FROM postings WHERE entry_id = ?", (entry_id,)
        ).fetchall()
        (up_id, up, up_delta), (down_id, down, down_delta) = sorted(postings, key=lambda p: -int(p[2]))
        db.execute("UPDATE postings SET delta = ? WHERE id = ?", (str(int(up_delta) + extra), up_id))
        db.execute("UPDATE postings SET delta = ? WHERE id = ?", (str(int(down_delta) - extra), down_id))
        for account, change in ((up, extra), (down, -extra)):
            (bal,) = db.execute("SELECT balance FROM accounts WHERE address = ?", (account,)).fetchone()
            db.execute("UPDATE accounts SET balance = ? WHERE address = ?", (str(int(bal) + change), account))
        for (shard,) in db.execute("SELECT shard FROM chain_heads").fetchall():
            prev, seq, last = GENESIS, 0, None
            rows = db.execute(
                "SELECT id, seq, ts_us, kind, reason, session_id, task_id, node, epoch FROM entries "
                "WHERE shard = ? ORDER BY seq",
                (shard,),
            ).fetchall()
            for eid, seq, ts, kind, reason, sid, tid, node, epoch in rows:
                lines = db.execute(
                    "SELECT account, delta FROM postings WHERE entry_id = ?", (eid,)
                ).fetchall()
                record = EntryRecord(
                    shard,
                    seq,
                    ts,
                    kind,
                    reason,
                    sid,
                    tid,
                    node,
                    epoch,
                    tuple(sorted((a, int(d)) for a, d in lines)),
                )
                digest = entry_hash(prev, record)
                db.execute("UPDATE entries SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, eid))
                prev, last = digest, eid
            db.execute(
                "UPDATE chain_heads SET seq = ?, hash = ?, last_entry_id = ? WHERE shard = ?",
                (seq, prev, last, shard),
            )


@pytest.fixture
async def anchored(db_path: Path, clock: FakeClock) -> AsyncIterator[tuple[Ledger, Identity, Path]]:
    """A ledger with some history, and the router's signed checkpoint of it."""
    ledger = await Ledger.open(f"sqlite+aiosqlite:///{db_path}", clock=clock)
    router = Identity.generate()
    await ledger.deposit(USER, 100 * COR)
    await ledger.fund_session("s1", USER, 50 * COR)
    for i in range(3):
        await ledger.reserve("s1", f"t{i}", 2 * COR)
        await ledger.settle(f"t{i}", {MINER: COR}, treasury_fee=COR // 10)
    path = ledger.checkpoint_file(db_path.parent)
    assert path == Path(f"{db_path}.checkpoints")  # beside the database, not in its tables
    assert await ledger.write_checkpoint(router, path) is not None
    try:
        yield ledger, router, path
    finally:
        await ledger.close()


async def test_an_intact_ledger_matches_its_signed_checkpoint(
    anchored: tuple[Ledger, Identity, Path],
) -> None:
    ledger, router, path = anchored
    report = await ledger.verify(path, router.address)
    assert report.ok, report.reason
    assert "checkpoint of 2030-01-01T00:00:00+00:00" in report.reason
    await ledger.deposit(USER, COR)  # history after the checkpoint is fine: the next one covers it
    assert (await ledger.verify(path, router.address)).ok
    assert await ledger.write_checkpoint(router, path) is not None
    assert await ledger.write_checkpoint(router, path) is None  # nothing moved: no new line
    assert len(path.read_text().splitlines()) == 2


async def test_a_rewritten_history_with_every_hash_recomputed_fails_naming_the_checkpoint(
    anchored: tuple[Ledger, Identity, Path], db_path: Path
) -> None:
    ledger, router, path = anchored
    rewrite_history(db_path, entry_id=1, extra=1_000 * COR)  # the first deposit, 1,000 COR larger
    assert await ledger.balance(USER) > 1_000 * COR
    plain = await ledger.verify()
    assert plain.ok, "the attack recomputes the chain: without an anchor it passes"
    report = await ledger.verify(path, router.address)
    assert not report.ok
    assert "signed checkpoint of 2030-01-01" in report.reason and router.address in report.reason
    assert "rewritten" in report.reason
    with pytest.raises(LedgerIntegrityError, match="no longer passes through the signed checkpoint of 2030"):
        await ledger.write_checkpoint(router, path)  # the router refuses to bless the rewritten history


async def test_deleting_entries_back_past_the_checkpoint_fails(
    anchored: tuple[Ledger, Identity, Path], db_path: Path
) -> None:
    ledger, router, path = anchored
    with sqlite3.connect(db_path) as db:
        (last,) = db.execute("SELECT max(id) FROM entries").fetchone()
        for account, delta in db.execute(
            "SELECT account, delta FROM postings WHERE entry_id = ?", (last,)
        ).fetchall():
            (bal,) = db.execute("SELECT balance FROM accounts WHERE address = ?", (account,)).fetchone()
            db.execute(
                "UPDATE accounts SET balance = ? WHERE address = ?", (str(int(bal) - int(delta)), account)
            )
        db.execute("DELETE FROM postings WHERE entry_id = ?", (last,))
        db.execute("DELETE FROM entries WHERE id = ?", (last,))
        (seq, digest, eid) = db.execute(
            "SELECT seq, hash, id FROM entries ORDER BY id DESC LIMIT 1"
        ).fetchone()
        db.execute("UPDATE chain_heads SET seq = ?, hash = ?, last_entry_id = ?", (seq, digest, eid))
    assert (await ledger.verify()).ok
    report = await ledger.verify(path, router.address)
    assert (
        not report.ok
        and "covers seq" in report.reason
        and "checkpoint of 2030-01-01T00:00:00+00:00" in report.reason
    )


async def test_a_checkpoint_not_signed_by_the_router_is_rejected(
    anchored: tuple[Ledger, Identity, Path],
) -> None:
    ledger, router, path = anchored
    forger = Identity.generate()
    report = await ledger.verify(path, forger.address)  # the file's signer is not who we trust
    assert not report.ok and "not signed by" in report.reason
    line = path.read_text().splitlines()[0]
    path.write_text(
        line.replace('"ts_us":', '"ts_us":1') + "\n" + line + "\n"
    )  # an edited line, then a good one
    report = await ledger.verify(path, router.address)
    assert not report.ok and "line 1) is not signed by" in report.reason


async def test_a_line_torn_by_a_crash_is_skipped(anchored: tuple[Ledger, Identity, Path]) -> None:
    ledger, router, path = anchored
    with path.open("a") as f:
        f.write('{"payload": {"domain": "hivemesh-ledger-chec')
    report = await ledger.verify(path, router.address)
    assert report.ok and "checkpoint of 2030-01-01T00:00:00+00:00" in report.reason
    await ledger.deposit(USER, COR)
    assert await ledger.write_checkpoint(router, path) is not None  # appended on a line of its own
    report = await ledger.verify(path, router.address)
    assert report.ok and "line 3" in report.reason, report.reason


def test_the_cli_verify_checks_the_routers_checkpoints(tmp_path: Path) -> None:
    router = Identity.load_or_create(tmp_path / "router.key")
    db_path = tmp_path / "ledger.db"

    async def setup() -> None:
        ledger = await Ledger.open(f"sqlite+aiosqlite:///{db_path}")
        try:
            await ledger.deposit(USER, 5 * COR)
            await ledger.withdraw(USER, COR)
            await ledger.write_checkpoint(router, ledger.checkpoint_file(tmp_path))
        finally:
            await ledger.close()

    asyncio.run(setup())
    argv = [sys.executable, "-m", "hivemesh.cli.main", "ledger", "verify", "--data-dir", str(tmp_path)]
    env = {**os.environ, "COLUMNS": "400"}
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "checkpoint of" in ok.stdout
    rewrite_history(db_path, entry_id=1, extra=COR)
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2
    assert "signed checkpoint of" in bad.stderr and router.address in bad.stderr
