"""The ``evm`` ledger back-end: the same ``Ledger`` interface, with stake and payment on an EVM chain.

The local SQLite ledger stays the hot path's book and the journal of every movement; the chain holds the
money. Two background tasks join them:

- the **sender** turns the journal entries after the chain's journal cursor into one ``apply_batch``
  transaction (``evm_journal.py``) whenever ``batch_size`` settled tasks are waiting or the oldest has waited
  ``batch_interval_s``. A request is billed locally and answered at once; it never waits for the chain. A batch
  that reverts is split until the one operation at fault is found, recorded (``<ledger.db>.chain-failed``, shown on
  the dashboard) and left out; an unreachable chain is retried with back-off; a batch sent twice reverts on the
  contract's cursor. Nothing is lost: the entries are durable and the cursor moves only when a batch lands.
- the **follower** mirrors chain events (deposits, withdrawals, stakes, unstakes, slashes by other validators)
  into the local ledger (``evm_mirror.py``), so stake and escrow reads are local: cached, refreshed from events.

Calls that move money in from outside or out to an owner go to the chain first (``deposit`` pays from the
router's key; ``withdraw``, ``stake``, ``request_unstake`` and ``complete_unstake`` sign with the account's own
key, which this ledger must hold) and return once the follower has mirrored them.

    ledger = await EvmLedger.open_chain("sqlite+aiosqlite:///ledger.db", deployment, router_account)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.abi import event_abi_to_log_topic

from hivemesh.chain.artifacts import load
from hivemesh.chain.client import Chain, Deployment
from hivemesh.errors import ChainReverted, ChainUnavailable, LedgerError
from hivemesh.identity import Identity
from hivemesh.ledger import accounts as acc
from hivemesh.ledger import evm_journal, evm_mirror
from hivemesh.ledger.accounts import REWARD_POOL, TREASURY, from_us
from hivemesh.ledger.checkpoint import Checkpoint
from hivemesh.ledger.ledger import Ledger

log = logging.getLogger(__name__)
_ENTRIES_PER_TASK = 6  # a billed task writes up to ~5 entries (top-up, reserve, payout, fee, release)


@dataclass(frozen=True)
class ChainStatus:
    """The sender and follower, for the dashboard's payments page."""

    state: str  # idle, waiting (a batch filling), sending, retrying (a batch reverted), unreachable
    rpc_url: str
    chain_cursor: int  # the last journal entry the chain has applied
    journal_head: int  # the newest journal entry
    batches: int  # batches landed by this process
    tasks_settled: int  # tasks settled on chain by this process
    last_batch: Mapping[str, Any] | None  # tasks, gas, tx, block, at
    last_error: str | None
    failed: tuple[str, ...]  # operations left out because they revert (their keys)
    synced_block: int  # the last block whose events are mirrored


@dataclass
class _Link:
    chain: Chain
    deployment: Deployment
    router: LocalAccount
    signers: dict[str, LocalAccount]
    batch_size: int
    batch_interval_s: float
    poll_s: float
    state_dir: Path
    origins: evm_mirror.Origins
    topics: dict[bytes, tuple[str, Any]] = field(default_factory=dict)
    cursor: int | None = None
    synced: int = -1
    state: str = "idle"
    batches: int = 0
    tasks_settled: int = 0
    last_batch: dict[str, Any] | None = None
    last_error: str | None = None
    failed: dict[str, str] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sync_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flush_now: bool = False
    anchor: Checkpoint | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class EvmLedger(Ledger):
    """Open with ``await EvmLedger.open_chain(...)``; everything else is ``Ledger``'s interface."""

    _link: _Link | None = None

    @classmethod
    async def open_chain(
        cls,
        url: str,
        deployment: Deployment,
        router: LocalAccount,
        *,
        signers: Mapping[str, LocalAccount] | None = None,
        batch_size: int = 100,
        batch_interval_s: float = 1.0,
        poll_s: float = 0.5,
        rpc_timeout_s: float = 5.0,
        **kwargs: Any,
    ) -> EvmLedger:
        if not 1 <= batch_size <= 200:
            raise LedgerError(f"batch_size must be in 1..200 (the contract's limits), got {batch_size}")
        _require_sqlite(url)
        ledger = await cls.open(url, **kwargs)
        assert isinstance(ledger, EvmLedger)
        chain = Chain.connect(deployment.rpc_url, deployment, timeout=rpc_timeout_s)
        keys = {acc.address(a.address): a for a in (signers or {}).values()}
        keys[acc.address(router.address)] = router
        link = _Link(
            chain,
            deployment,
            router,
            keys,
            batch_size,
            batch_interval_s,
            poll_s,
            ledger.checkpoint_file(Path(".")).parent,
            evm_mirror.Origins(deployment.treasury, deployment.session_payment),
        )
        for name, contract in (("SessionPayment", chain.session_payment), ("NodePool", chain.node_pool)):
            for abi in load(name).abi:
                if abi.get("type") == "event" and abi["name"] in evm_mirror.MIRRORED:
                    link.topics[event_abi_to_log_topic(abi)] = (abi["name"], contract)  # type: ignore[arg-type]
        link.failed = ledger._read_failed(link)
        ledger._link = link
        try:
            link.synced = ledger._read_synced(link)
            await ledger.sync()
        except BaseException:
            await Ledger.close(ledger)
            raise
        link.tasks = [
            asyncio.create_task(ledger._send_loop(), name="evm-ledger-sender"),
            asyncio.create_task(ledger._follow_loop(), name="evm-ledger-follower"),
        ]
        return ledger

    @property
    def link(self) -> _Link:
        if self._link is None:
            raise LedgerError("this EvmLedger was not opened with open_chain")
        return self._link

    async def close(self) -> None:
        link = self._link
        if link is not None and link.tasks:
            try:
                await self.flush(within=5.0)
            except (TimeoutError, LedgerError) as exc:
                log.warning("evm ledger closing with entries not yet on chain error=%s", exc)
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            link.tasks = []
        await super().close()

    # -- files beside the database: the follower's block and the operations left out -------------------------

    def _side_file(self, link: _Link, suffix: str) -> Path:
        return self.checkpoint_file(link.state_dir).with_suffix(suffix)

    def _read_synced(self, link: _Link) -> int:
        path = self._side_file(link, ".chain-sync")
        try:
            return int(json.loads(path.read_text())["block"])
        except (OSError, ValueError, KeyError):
            return link.deployment.start_block - 1

    def _read_failed(self, link: _Link) -> dict[str, str]:
        path = self._side_file(link, ".chain-failed")
        failed: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    failed[row["key"]] = row["error"]
                except (ValueError, KeyError):
                    continue
        return failed

    # -- the follower ---------------------------------------------------------------------------------------

    async def sync(self) -> int:
        """Mirror every chain event up to the newest block; return that block. An event the local book cannot
        take (it would overdraw: the chain and the book disagree) is logged and recorded, never retried forever."""
        link = self.link
        async with link.sync_lock:
            latest = await asyncio.to_thread(link.chain.block_number)
            if latest <= link.synced:
                return link.synced
            events = await asyncio.to_thread(self._events, link, link.synced + 1, latest)
            for ev in events:
                try:
                    await self._run(lambda book, ev=ev: evm_mirror.apply(book, ev, link.origins))  # type: ignore[misc]
                except LedgerError as exc:
                    log.error(
                        "chain event not mirrored event=%s key=%s error=%s", ev.name, ev.key, exc.message
                    )
                    await self._record_failed(link, [f"event:{ev.key}"], f"{ev.name}: {exc.message}")
            link.synced = latest
            path = self._side_file(link, ".chain-sync")
            await asyncio.to_thread(path.write_text, json.dumps({"block": latest}))
            return latest

    def _events(self, link: _Link, first: int, last: int) -> list[evm_mirror.ChainEvent]:
        dep = link.deployment
        logs = link.chain.w3.eth.get_logs(
            {"fromBlock": first, "toBlock": last, "address": [dep.session_payment, dep.node_pool]}  # type: ignore[typeddict-item]
        )
        out = []
        for raw in logs:
            found = link.topics.get(bytes(raw["topics"][0])) if raw["topics"] else None
            if found is None:
                continue
            name, contract = found
            data = contract.events[name]().process_log(raw)
            key = f"{evm_journal.CHAIN_REASON}{data['transactionHash'].hex()}:{data['logIndex']}"
            out.append(evm_mirror.ChainEvent(key, name, dict(data["args"]), int(data["blockNumber"])))
        return out

    async def _follow_loop(self) -> None:
        link = self.link
        while True:
            await asyncio.sleep(link.poll_s)
            try:
                await self.sync()
            except LedgerError as exc:
                log.warning("evm ledger follower: %s", exc.message)

    # -- the sender -----------------------------------------------------------------------------------------

    async def _journal_head(self) -> int:
        async with self._db.read() as conn:
            return await evm_journal.head(conn)

    async def flush(self, within: float = 30.0) -> None:
        """Wait until the chain has applied every journal entry written before this call."""
        link = self.link
        target = await self._journal_head()
        deadline = time.monotonic() + within
        link.flush_now = True
        try:
            while link.cursor is None or link.cursor < target:
                link.wake.set()
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"chain cursor {link.cursor} short of journal entry {target} after {within} s"
                    )
                await asyncio.sleep(0.02)
        finally:
            link.flush_now = False

    def notify(self) -> None:
        """A hint that entries were written (the sender polls anyway)."""
        if self._link is not None:
            self._link.wake.set()

    async def _send_loop(self) -> None:
        link = self.link
        max_entries = link.batch_size * _ENTRIES_PER_TASK
        first_seen: float | None = None
        backoff = 0.2
        while True:
            try:
                if link.cursor is None:
                    fn = link.chain.session_payment.functions.journal_cursor()
                    link.cursor = int(await asyncio.to_thread(link.chain.call, fn))
                if link.anchor is not None:
                    await self._send_anchor(link, link.anchor)
                async with self._db.read() as conn:
                    batch = await evm_journal.read(
                        conn, link.cursor, max_entries, link.deployment.treasury, frozenset(link.failed)
                    )
                if batch.cursor == link.cursor:
                    link.state, first_seen = "idle", None
                    link.wake.clear()
                    await _wait(link.wake, 0.05)
                    continue
                first_seen = first_seen or time.monotonic()
                full = len(batch.settlements) >= link.batch_size or max_entries < link.batch_size
                waited = time.monotonic() - first_seen >= link.batch_interval_s
                if not (full or waited or link.flush_now):
                    link.state = "waiting"
                    await asyncio.sleep(0.02)
                    continue
                link.state = "sending"
                receipt = await asyncio.to_thread(self._send_batch, link, batch)
                link.cursor, first_seen, backoff = batch.cursor, None, 0.2
                max_entries = link.batch_size * _ENTRIES_PER_TASK
                link.batches += 1
                link.tasks_settled += len(batch.settlements)
                link.last_batch = {
                    "tasks": len(batch.settlements),
                    "ops": batch.ops,
                    "gas": int(receipt["gasUsed"]),
                    "tx": receipt["transactionHash"].hex(),
                    "block": int(receipt["blockNumber"]),
                    "at": time.time(),
                }
                link.last_error = None
            except ChainReverted as exc:
                link.state, link.last_error = "retrying", exc.message
                moved = await self._reread_cursor(link)
                if moved:
                    continue
                if batch.cursor - batch.prev_cursor > 1 and max_entries > 1:
                    max_entries = max(1, min(max_entries, batch.cursor - batch.prev_cursor) // 2)
                    log.warning(
                        "evm ledger batch reverted, splitting entries=%d error=%s", max_entries, exc.message
                    )
                else:
                    await self._leave_out(link, batch, exc.message)
            except (ChainUnavailable, OSError) as exc:
                link.state, link.last_error = "unreachable", str(getattr(exc, "message", exc))
                link.cursor = None
                log.warning(
                    "evm ledger sender: chain unreachable, retrying in %.1f s error=%s",
                    backoff,
                    link.last_error,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _send_batch(self, link: _Link, batch: evm_journal.Batch) -> Any:
        fn = link.chain.session_payment.functions.apply_batch(*batch.args())
        # gas estimated (an eth_call): a batch that would revert says why before it costs a nonce
        return link.chain.transact(link.router, fn, timeout=30.0)

    async def _reread_cursor(self, link: _Link) -> bool:
        """After a revert: True when the chain's cursor moved (the batch had landed after all)."""
        before = link.cursor
        try:
            fn = link.chain.session_payment.functions.journal_cursor()
            link.cursor = int(await asyncio.to_thread(link.chain.call, fn))
        except LedgerError:
            link.cursor = None
            return True
        return link.cursor != before

    async def _leave_out(self, link: _Link, batch: evm_journal.Batch, error: str) -> None:
        log.error("evm ledger: operation reverts on chain, left out keys=%s error=%s", batch.keys, error)
        await self._record_failed(link, batch.keys, error)

    async def _record_failed(self, link: _Link, keys: list[str], error: str) -> None:
        path = self._side_file(link, ".chain-failed")
        lines = "".join(json.dumps({"key": k, "error": error, "at": time.time()}) + "\n" for k in keys)
        await asyncio.to_thread(_append, path, lines)
        for k in keys:
            link.failed[k] = error

    async def _send_anchor(self, link: _Link, cp: Checkpoint) -> None:
        digest = hashlib.sha256(cp.payload()).digest()
        fn = link.chain.checkpoint_anchor.functions.anchor(digest, cp.ts_us)
        try:
            await asyncio.to_thread(link.chain.transact, link.router, fn)
        except ChainReverted as exc:
            log.warning("checkpoint not anchored error=%s", exc.message)
        if link.anchor is cp:
            link.anchor = None

    async def write_checkpoint(self, identity: Identity, path: Path) -> Checkpoint | None:
        cp = await super().write_checkpoint(identity, path)
        if cp is not None and self._link is not None:
            self._link.anchor = cp
        return cp

    def chain_status(self) -> ChainStatus:
        link = self.link
        return ChainStatus(
            state=link.state,
            rpc_url=link.deployment.rpc_url,
            chain_cursor=link.cursor or 0,
            journal_head=0,
            batches=link.batches,
            tasks_settled=link.tasks_settled,
            last_batch=dict(link.last_batch) if link.last_batch else None,
            last_error=link.last_error,
            failed=tuple(sorted(link.failed)),
            synced_block=link.synced,
        )

    async def status(self) -> ChainStatus:
        s = self.chain_status()
        return ChainStatus(**{**s.__dict__, "journal_head": await self._journal_head()})

    # -- calls that go to the chain first -------------------------------------------------------------------

    def _signer(self, account: str, what: str) -> LocalAccount:
        key = self.link.signers.get(acc.address(account))
        if key is None:
            raise LedgerError(
                f"{what} on chain must be signed by {account}'s own key, which this router does not hold "
                f"(use hivemesh {what} --chain with that key)"
            )
        return key

    async def _on_chain(self, account: LocalAccount, fn: Any, value: int = 0) -> Any:
        receipt = await asyncio.to_thread(self.link.chain.transact, account, fn, value=value)
        await self._sync_through(int(receipt["blockNumber"]))
        return receipt

    async def _sync_through(self, block: int) -> None:
        while self.link.synced < block:
            await self.sync()

    async def _mirrored(self, receipt: Any) -> int:
        for raw in receipt["logs"]:
            key = f"{evm_journal.CHAIN_REASON}{raw['transactionHash'].hex()}:{raw['logIndex']}"
            found = await self._entry_for(key)
            if found is not None:
                return found
        raise LedgerError("the chain accepted the call but no mirrored entry was found")

    async def _entry_for(self, key: str) -> int | None:
        from sqlalchemy import select

        from hivemesh.ledger.schema import entries

        async with self._db.read() as conn:
            found = (await conn.execute(select(entries.c.id).where(entries.c.reason == key))).scalar()
        return None if found is None else int(found)

    async def deposit(self, account: str, amount: int, reason: str = "") -> int:
        """Pay ``amount`` from the router's key into ``account``'s balance on chain; return the mirrored entry."""
        account, amount = acc.holder(account), acc.amount(amount)
        sp = self.link.chain.session_payment.functions
        if account == REWARD_POOL:
            fn = sp.fund_reward_pool()
        else:
            fn = sp.deposit_for(self.link.deployment.treasury if account == TREASURY else account)
        return await self._mirrored(await self._on_chain(self.link.router, fn, amount))

    async def withdraw(self, account: str, amount: int, reason: str = "") -> int:
        account, amount = acc.holder(account), acc.amount(amount)
        await self._check_balance(account, amount)
        key = self._signer(account, "withdraw")
        return await self._mirrored(
            await self._on_chain(key, self.link.chain.session_payment.functions.withdraw(amount))
        )

    async def _check_balance(self, account: str, amount: int) -> None:
        have = await self.balance(account)
        if have < amount:  # what the chain would say, but from the local book: it knows about pending batches
            from hivemesh.errors import InsufficientFunds

            raise InsufficientFunds(
                f"Insufficient funds in {account}: it holds {have} but this needs {amount}."
            )

    async def stake(self, node: str, amount: int, pool: int) -> int:
        """The node's balance (on chain: withdrawn from SessionPayment) staked in the NodePool for ``pool``."""
        node, amount = acc.address(node), acc.amount(amount)
        self.pools.minimum(pool)
        key = self._signer(node, "stake")
        await self._check_balance(node, amount)
        await self._on_chain(key, self.link.chain.session_payment.functions.withdraw(amount))
        return await self._mirrored(
            await self._on_chain(key, self.link.chain.node_pool.functions.stake(pool), amount)
        )

    async def request_unstake(self, node: str, amount: int) -> datetime:
        node, amount = acc.address(node), acc.amount(amount)
        key = self._signer(node, "unstake")
        receipt = await self._on_chain(key, self.link.chain.node_pool.functions.request_unstake(amount))
        (event,) = self.link.chain.node_pool.events.UnstakeRequested().process_receipt(receipt)
        return from_us(int(event["args"]["available_at"]) * 1_000_000)

    async def complete_unstake(self, node: str) -> int:
        """The cooled-down stake back to the node's balance (on chain: unstaked, then deposited again)."""
        node = acc.address(node)
        key = self._signer(node, "unstake")
        receipt = await self._on_chain(key, self.link.chain.node_pool.functions.complete_unstake())
        (event,) = self.link.chain.node_pool.events.Unstaked().process_receipt(receipt)
        amount = int(event["args"]["amount"])
        await self._on_chain(key, self.link.chain.session_payment.functions.deposit(), amount)
        return amount


def _require_sqlite(url: str) -> None:
    """The sender's cursor is a journal entry id: every entry below it must be committed when the sender reads
    past it. SQLite commits entries one writer at a time, in id order; PostgreSQL hands ids out from a sequence to
    concurrent transactions that commit in any order, so a batch could skip an entry committed late, for good."""
    scheme = url.split(":", 1)[0]
    if not scheme.startswith("sqlite"):
        raise LedgerError(
            f"the evm ledger back-end keeps its book in SQLite, not {scheme}: its journal's ids are the chain's "
            "cursor and must commit in order; give a sqlite+aiosqlite:/// ledger URL (or leave --ledger-url "
            "out) when the router's data dir holds chain.json"
        )


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)
