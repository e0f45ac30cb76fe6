"""The ledger: every movement of COR as a balanced, hash-chained journal entry, one transaction per call.

Money is never created or lost (each entry's postings sum to zero; only ``world`` may go negative, so
``totals() == deposits - withdrawals``), never spent twice (balances are checked under row locks, and
``settle`` is idempotent per task), and tampering shows (``verify`` recomputes every hash chain and balance).

    ledger = await Ledger.open("sqlite+aiosqlite:///ledger.db")
    await ledger.deposit(user, 10 * COR)
    await ledger.fund_session("s1", user, 5 * COR)
    await ledger.reserve("s1", "t1", 1 * COR)
    await ledger.settle("t1", {miner: 6 * COR // 10}, treasury_fee=COR // 10)
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import DBAPIError

from hivemesh.errors import LedgerError, LedgerIntegrityError
from hivemesh.identity import Identity
from hivemesh.ledger import accounts as acc
from hivemesh.ledger import audit, checkpoint, escrow, holds, queries, staking
from hivemesh.ledger.accounts import REWARD_POOL, TREASURY, WORLD, EntryKind, from_us, to_us
from hivemesh.ledger.book import Book, EntrySpec, RetryTransaction
from hivemesh.ledger.chain import GENESIS, VerifyReport
from hivemesh.ledger.checkpoint import Checkpoint
from hivemesh.ledger.db import Database
from hivemesh.ledger.group import GroupCommit
from hivemesh.ledger.keys import KeyInfo, KeyStore
from hivemesh.ledger.queries import EntryView
from hivemesh.ledger.schema import accounts, chain_heads, entries, migrate, stakes
from hivemesh.ledger.views import AccountView, HoldView, Settlement, StakePools, Unstaking

log = logging.getLogger(__name__)
T = TypeVar("T")
_ATTEMPTS = 5
_RETRYABLE = {"40P01", "40001"}  # PostgreSQL deadlock_detected, serialization_failure: safe to run again


_BALANCE = select(accounts.c.balance).where(accounts.c.address == bindparam("name"))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def account_name(name: str) -> str:
    """Any account name, normalised: an address (checksummed), a fixed system name, or ``prefix:ref``."""
    if name in (WORLD, TREASURY, REWARD_POOL):
        return name
    prefix, sep, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if sep and prefix in ("stake", "unstaking"):
        return f"{prefix}:{acc.address(rest)}"
    if sep and prefix in ("escrow", "hold"):
        return f"{prefix}:{acc.ref(rest, 'id')}"
    return acc.address(name)


class Ledger:
    """Open with ``await Ledger.open(url)``; close with ``await ledger.close()`` (or ``async with``)."""

    def __init__(
        self,
        db: Database,
        *,
        chain_shards: int,
        pools: StakePools,
        unstake_cooldown: timedelta,
        clock: Callable[[], datetime],
        key_cache_ttl: float,
    ) -> None:
        self._db = db
        self._shards = chain_shards
        self.pools = pools
        self.unstake_cooldown = unstake_cooldown
        self._clock = clock
        self.keys = KeyStore(db, clock, key_cache_ttl)
        # reserves, settlements and releases: group-committed (see holds.py and group.py)
        self._holds: GroupCommit[holds.Op, holds.Result] = GroupCommit(self._apply_holds)
        self._anchor: Checkpoint | None = None  # the last checkpoint this process wrote

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        chain_shards: int = 1,
        pools: StakePools | None = None,
        unstake_cooldown: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = _utcnow,
        key_cache_ttl: float = 5.0,
        pool_size: int = 10,
    ) -> Ledger:
        """Connect, apply missing migrations and make sure every chain shard has its head row."""
        if (
            isinstance(chain_shards, bool)
            or not isinstance(chain_shards, int)
            or not 1 <= chain_shards <= 4096
        ):
            raise LedgerError(f"chain_shards must be an int in 1..4096, got {chain_shards!r}")
        db = await Database.open(url, pool_size=pool_size)
        try:
            async with db.write() as conn:
                await migrate(conn)
                await conn.execute(
                    db.insert(chain_heads)
                    .values(
                        [
                            {"shard": s, "seq": 0, "hash": GENESIS, "last_entry_id": None}
                            for s in range(chain_shards)
                        ]
                    )
                    .on_conflict_do_nothing(index_elements=["shard"])
                )
                await conn.execute(
                    db.insert(accounts)
                    .values(
                        [{"address": a, "balance": 0, "earned": 0} for a in (REWARD_POOL, TREASURY, WORLD)]
                    )
                    .on_conflict_do_nothing(index_elements=["address"])
                )
        except BaseException:
            await db.close()
            raise
        return cls(
            db,
            chain_shards=chain_shards,
            pools=pools or StakePools(),
            unstake_cooldown=unstake_cooldown,
            clock=clock,
            key_cache_ttl=key_cache_ttl,
        )

    async def close(self) -> None:
        await self._holds.close()
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def _run(self, operation: Callable[[Book], Awaitable[T]]) -> T:
        """Run ``operation`` in one write transaction, again from the start if the database asks for a retry."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._db.transaction() as conn:
                    return await operation(Book(self._db, conn, self._shards, to_us(self._clock())))
            except RetryTransaction as e:
                why = str(e)
            except DBAPIError as e:
                code = getattr(e.orig, "sqlstate", None)
                if code not in _RETRYABLE:
                    raise
                why = f"sqlstate {code}"
            log.info("ledger transaction retried attempt=%d reason=%s", attempt + 1, why)
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise LedgerError(f"the ledger stayed busy after {_ATTEMPTS} attempts; try again")

    # -- money in and out -------------------------------------------------------------------------------

    async def deposit(self, account: str, amount: int, reason: str = "") -> int:
        """Credit ``account`` (an address, ``treasury`` or ``reward_pool``) from the outside; return the entry id."""
        account, amount = acc.holder(account), acc.amount(amount)
        return await self._run(
            lambda book: book.move(EntrySpec(EntryKind.DEPOSIT, {WORLD: -amount, account: amount}, reason))
        )

    async def withdraw(self, account: str, amount: int, reason: str = "") -> int:
        """Send ``amount`` from ``account`` to the outside, or raise ``InsufficientFunds``; return the entry id."""
        account, amount = acc.holder(account), acc.amount(amount)
        return await self._run(
            lambda book: book.move(EntrySpec(EntryKind.WITHDRAW, {account: -amount, WORLD: amount}, reason))
        )

    async def balance(self, account: str) -> int:
        """The balance of any account (0 for one never used)."""
        name = account_name(account)
        async with self._db.read() as conn:
            value = (
                await conn.execute(select(accounts.c.balance).where(accounts.c.address == name))
            ).scalar()
        return int(value or 0)

    async def account(self, address: str) -> AccountView:
        address = acc.address(address)
        names = [address, acc.stake_account(address), acc.unstaking_account(address)]
        async with self._db.read(snapshot=True) as conn:
            rows = {
                r.address: (r.balance, r.earned)
                for r in await conn.execute(
                    select(accounts.c.address, accounts.c.balance, accounts.c.earned).where(
                        accounts.c.address.in_(names)
                    )
                )
            }
            stake_row = (
                await conn.execute(
                    select(stakes.c.pool, stakes.c.unstake_available_us).where(stakes.c.node == address)
                )
            ).first()
        balance, earned = rows.get(address, (0, 0))
        cooling = rows.get(names[2], (0, 0))[0]
        available = stake_row.unstake_available_us if stake_row is not None and cooling else None
        return AccountView(
            address=address,
            balance=balance,
            staked=rows.get(names[1], (0, 0))[0],
            unstaking=Unstaking(cooling, None if available is None else from_us(available)),
            earned=earned,
            pool=None if stake_row is None else stake_row.pool,
        )

    async def totals(self) -> int:
        """Sum of every balance except ``world``'s: always deposits minus withdrawals."""
        async with self._db.read() as conn:
            if self._db.dialect == "postgresql":  # NUMERIC sums exactly in SQL
                total = (
                    await conn.execute(
                        select(func.sum(accounts.c.balance)).where(accounts.c.address != WORLD)
                    )
                ).scalar()
                return int(total or 0)
            return sum(
                (await conn.execute(select(accounts.c.balance).where(accounts.c.address != WORLD))).scalars()
            )

    # -- read-only queries (dashboards, reports; see queries.py) ------------------------------------------

    async def recent_entries(self, limit: int = 50) -> list[EntryView]:
        """The newest ``limit`` journal entries (newest first), each with its postings."""
        async with self._db.read(snapshot=True) as conn:
            return await queries.recent_entries(conn, max(0, int(limit)))

    async def balances_by_kind(self) -> dict[str, int]:
        """Balances summed per kind of account: ``accounts`` (addresses), ``treasury``, ``reward_pool``,
        ``escrow``, ``hold``, ``stake``, ``unstaking``, ``world``; they always sum to 0."""
        async with self._db.read(snapshot=True) as conn:
            return await queries.balances_by_kind(conn)

    async def top_accounts(self, prefix: str = "", limit: int = 10) -> list[tuple[str, int, int]]:
        """(address, balance, earned) of user and node addresses starting with ``prefix``, most earned first."""
        async with self._db.read(snapshot=True) as conn:
            return await queries.top_accounts(conn, prefix, max(0, int(limit)))

    # -- stake --------------------------------------------------------------------------------------------

    async def stake(self, node: str, amount: int, pool: int) -> int:
        """Move ``amount`` of the node's balance into its stake, for ``pool``; return the entry id."""
        return await self._run(lambda book: staking.stake(book, self.pools, node, amount, pool))

    async def staked(self, node: str) -> int:
        """Active stake (stake in unstake cooldown not included)."""
        return await self.balance(acc.stake_account(node))

    async def request_unstake(self, node: str, amount: int) -> datetime:
        """Start the cooldown for ``amount`` of active stake; return when ``complete_unstake`` may take it."""
        return await self._run(
            lambda book: staking.request_unstake(book, self.unstake_cooldown, node, amount)
        )

    async def complete_unstake(self, node: str) -> int:
        """Return stake whose cooldown has ended to the node's balance; raise if it has not ended."""
        return await self._run(lambda book: staking.complete_unstake(book, node))

    async def check_stake(self, node: str, pool: int) -> None:
        """Raise ``LedgerError`` naming the shortfall if the node's active stake is below the pool's minimum."""
        staking.check_stake(self.pools, acc.address(node), pool, await self.staked(node))

    async def slash(
        self, node: str, fraction: Fraction | float, reason: str, task_id: str | None = None
    ) -> int:
        """Send ``fraction`` of the node's stake (active and cooling) to the treasury; return the amount."""
        share = acc.fraction(fraction)
        return await self._run(lambda book: staking.slash(book, node, share, reason, task_id))

    async def reward(self, account: str, amount: int, epoch: int, reason: str = "") -> int:
        """Pay from ``reward_pool``, once per (account, epoch); return the entry id (the first one on a repeat)."""
        return await self._run(lambda book: staking.reward(book, account, amount, epoch, reason))

    # -- sessions and tasks ------------------------------------------------------------------------------

    async def fund_session(self, session_id: str, owner: str, amount: int, reason: str = "") -> int:
        """Move ``amount`` from ``owner`` into the session's escrow (opening it); return the entry id."""
        return await self._run(lambda book: escrow.fund_session(book, session_id, owner, amount, reason))

    async def escrow_balance(self, session_id: str) -> int:
        return await self.balance(acc.escrow_account(session_id))

    async def close_session(self, session_id: str, refund_to: str) -> int:
        """Refund what is left in escrow and close the session; return the refund (0 if already closed)."""
        return await self._run(lambda book: escrow.close_session(book, session_id, refund_to))

    async def reserve(
        self,
        session_id: str,
        task_id: str,
        amount: int,
        *,
        top_up_from: str | None = None,
        key_id: str | None = None,
    ) -> None:
        """Hold ``amount`` of the session's escrow for one task, or raise ``InsufficientFunds``.

        ``top_up_from``: first move exactly the escrow's shortfall from this owner's balance (opening the
        session if need be), in the same transaction. ``key_id``: the API key
        whose budget (if it has one) the hold counts against; a hold beyond it raises ``InsufficientFunds``
        with code ``budget_exceeded``. Retrying with the same task and amount changes nothing."""
        await self._holds.submit(holds.Reserve(session_id, task_id, amount, top_up_from, key_id))

    async def _apply_holds(self, batch: Sequence[holds.Op]) -> list[holds.Result]:
        return await self._run(lambda book: holds.apply(book, batch))

    async def held(self) -> list[HoldView]:
        """Every hold still reserved (neither settled nor released), oldest first: for crash recovery."""
        async with self._db.read() as conn:
            return await escrow.held(conn)

    async def settle(self, task_id: str, payouts: Mapping[str, int], treasury_fee: int = 0) -> Settlement:
        """Pay miners and the fee from the task's hold and release the rest, atomically; idempotent per task."""
        result = await self._holds.submit(holds.Settle(task_id, payouts, treasury_fee))
        assert isinstance(result, Settlement)
        return result

    async def release(self, task_id: str, reason: str = "task failed") -> int:
        """Return the whole hold to the session's escrow (the task failed); return the amount."""
        result = await self._holds.submit(holds.Release(task_id, reason))
        assert isinstance(result, int)
        return result

    # -- audit -------------------------------------------------------------------------------------------

    async def verify(self, checkpoints: Path | None = None, signer: str | None = None) -> VerifyReport:
        """Recompute every hash chain, every entry's balance and every stored balance; with a ``checkpoints``
        file, also check the chains against its last signed checkpoint (signed by ``signer`` when given)."""
        anchor = None
        if checkpoints is not None:
            try:
                anchor = await asyncio.to_thread(checkpoint.last, checkpoints, signer)
            except LedgerError as e:
                return VerifyReport(False, 0, None, f"checkpoint file rejected: {e.message}")
        async with self._db.read(snapshot=True) as conn:
            return await audit.verify(conn, anchor)

    def checkpoint_file(self, fallback_dir: Path) -> Path:
        """Where this ledger's signed checkpoints go: beside a SQLite file, else in ``fallback_dir``."""
        url = self._db.engine.url
        if self._db.dialect == "sqlite" and url.database:
            return Path(url.database + ".checkpoints")
        return fallback_dir / "ledger.checkpoints"

    async def heads(self) -> tuple[tuple[int, int, str], ...]:
        """Every chain shard's head: (shard, seq, hash)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(chain_heads.c.shard, chain_heads.c.seq, chain_heads.c.hash).order_by(
                    chain_heads.c.shard
                )
            )
            return tuple((int(r.shard), int(r.seq), str(r.hash)) for r in rows)

    async def write_checkpoint(self, identity: Identity, path: Path) -> Checkpoint | None:
        """Sign the chain heads and append them to ``path`` (fsynced); None when they have not moved since the
        last checkpoint. Refuses (``LedgerIntegrityError``) when the chains no longer pass through the last
        checkpoint's heads: history it covered was rewritten, and signing now would bless that."""
        prev = self._anchor
        if prev is None:
            prev = await asyncio.to_thread(checkpoint.last, path, None)
        heads = await self.heads()
        if prev is not None and heads == prev.heads:
            return None
        if prev is not None:
            async with self._db.read(snapshot=True) as conn:
                for shard, seq, digest in prev.heads:
                    if seq == 0:
                        continue
                    found = (
                        await conn.execute(
                            select(entries.c.hash).where(entries.c.shard == shard, entries.c.seq == seq)
                        )
                    ).scalar()
                    if found != digest:
                        raise LedgerIntegrityError(
                            f"shard {shard} no longer passes through the signed {prev.describe()} in {path} "
                            f"(seq {seq}): the ledger's history was rewritten; run hivemesh ledger verify"
                        )
        cp = checkpoint.sign(identity, to_us(self._clock()), heads)
        await asyncio.to_thread(checkpoint.append, path, cp)
        self._anchor = cp
        return cp

    # -- API keys (see keys.py) --------------------------------------------------------------------------

    async def create_key(
        self,
        account: str,
        *,
        name: str = "",
        expires_at: datetime | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget: int | None = None,
    ) -> tuple[str, str]:
        return await self.keys.create_key(
            account, name=name, expires_at=expires_at, rpm=rpm, tpm=tpm, budget=budget
        )

    async def authenticate(self, secret: str) -> KeyInfo:
        return await self.keys.authenticate(secret)

    async def revoke(self, key_id: str) -> None:
        await self.keys.revoke(key_id)

    async def list_keys(self, account: str) -> list[KeyInfo]:
        return await self.keys.list_keys(account)
