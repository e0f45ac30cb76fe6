"""Billing: turns tasks into ledger movements (reserve before, settle after), slashes proven cheats.

Pricing rule (documented on purpose, because money depends on it):

* A model has a price per 1,000 prompt tokens and per 1,000 completion tokens (in the smallest unit, 10**-18 COR).
* Before a task runs, the router reserves its worst case from the session's escrow:
  ``k * price(prompt_bound, max_tokens)`` where ``prompt_bound`` is the prompt's UTF-8 byte count plus a template
  allowance (a token is at least one byte), so a task can never cost more than it reserved and concurrent requests
  can never overspend an escrow. A key's default session is topped up from the owner's balance as needed.
* A ``verified`` (or ``unverified``, k=1) task costs ``k * price(answer's usage)``: the user pays for the
  redundancy the session asked for. A treasury fee (``fee_bps``) is taken from it and the rest is split equally
  among the miners in consensus; dissenters, miners that timed out and cheats get nothing. A ``disputed`` or failed
  task costs nothing: its hold is released.
* A proven cheat (a reveal that does not match its precommit, a stream that does not match its commit, a forged
  signature) is slashed ``slash_fraction`` of its stake, to the treasury.

Owners that are not ledger accounts (the router's own static keys) are not billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hivemesh.config import BillingConfig, Price
from hivemesh.errors import InsufficientFunds, LedgerError, NotFound, PaymentRequired
from hivemesh.identity import Identity
from hivemesh.ledger import format_cor
from hivemesh.router.auth import current_principal
from hivemesh.router.domain import Outcome, TaskSpec

log = logging.getLogger(__name__)

CHEATS = frozenset({"bad_reveal", "stream_mismatch", "bad_signature", "fraud"})
VERIFY_BPS = 5_000  # token mode: a verifier's prefill is paid half of what the generator gets per token
TEMPLATE_ALLOWANCE = 64  # tokens a chat template may add around the messages
CHECKPOINT_INTERVAL_S = (
    60.0  # how often the router signs the ledger's chain heads (and once more on shutdown)
)


def billed(owner: str) -> bool:
    return owner.startswith("0x") and len(owner) == 42


def prompt_bound(spec: TaskSpec) -> int:
    text = spec.prompt if spec.kind == "completion" else "".join(m.content for m in spec.messages)
    return len(text.encode()) + TEMPLATE_ALLOWANCE + 4 * len(spec.messages)


class Billing:
    def __init__(self, ledger: Any, config: BillingConfig) -> None:
        self.ledger = ledger
        self.config = config
        self._tasks: set[asyncio.Task[Any]] = set()
        self._anchor: tuple[Identity, Path] | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    def price(self, model: str) -> Price:
        return self.config.prices.get(model, self.config.default_price)

    def worst_case(self, spec: TaskSpec) -> int:
        price = self.price(spec.model).of(prompt_bound(spec), spec.params.max_tokens)
        if spec.session.mode == "token":
            return _token_charge(price, spec.session.verifiers)
        return spec.session.redundancy * price

    def charge(self, spec: TaskSpec, outcome: Outcome, k: int) -> int:
        """What the user pays for an answered task: nothing when disputed or rejected, nor for an unverified
        answer unless the session asked for no verification (mode "none")."""
        if outcome.verdict in ("disputed", "rejected") or not billed(spec.session.owner):
            return 0
        if outcome.verdict == "unverified" and spec.session.mode != "none":
            return 0
        price = self.price(spec.model).of(outcome.usage.prompt_tokens, outcome.usage.completion_tokens)
        if outcome.mode == "token":
            return _token_charge(price, len(outcome.verifiers))
        return k * price

    async def reserve(self, spec: TaskSpec, *, default_session: bool) -> int:
        """Hold the task's worst case; raise PaymentRequired (402) if the money is not there.

        One ledger transaction: on a key's default session it tops the escrow up by exactly the shortfall from
        the owner's balance and reserves, so concurrent requests never take each other's top-up (no false 402)
        and never overspend. A key with a ``budget`` (the request's principal, see ``auth.current_principal``)
        gets 402 ``budget_exceeded`` when its held plus charged spend would pass the budget."""
        owner = spec.session.owner
        if not billed(owner):
            return 0
        amount = self.worst_case(spec)
        if amount == 0:
            return 0
        caller = current_principal.get()
        key_id = caller.key_id if caller is not None and caller.budget is not None else None
        try:
            await self.ledger.reserve(
                spec.session.id,
                spec.id,
                amount,
                top_up_from=owner if default_session else None,
                key_id=key_id,
            )
        except InsufficientFunds as exc:
            if exc.code == "budget_exceeded":
                raise PaymentRequired(exc.message, code="budget_exceeded") from None
            if default_session:
                raise PaymentRequired(
                    f"account {owner} has not enough balance for this request (needs up to {format_cor(amount)})"
                ) from None
            raise PaymentRequired(self._unfunded(spec, amount)) from None
        except NotFound:  # a custom session never funded: no escrow opened yet
            raise PaymentRequired(self._unfunded(spec, amount)) from None
        return amount

    @staticmethod
    def _unfunded(spec: TaskSpec, amount: int) -> str:
        return (
            f"session {spec.session.id} has not enough escrow for this request (needs {format_cor(amount)}); "
            "fund it with POST /api/v1/sessions/{id}/deposit"
        )

    def split(
        self, charge: int, consensus: Sequence[str], *, token: bool = False
    ) -> tuple[dict[str, int], int]:
        """The charge as payouts to the consensus miners and the treasury's fee (plus the indivisible rest):
        equal shares, or in token mode (``consensus`` = generator, then verifiers) the generator's share with
        each verifier getting ``VERIFY_BPS`` of it."""
        fee = charge * self.config.fee_bps // 10_000
        weights = [10_000] + [VERIFY_BPS] * (len(consensus) - 1) if token else [1] * len(consensus)
        total = sum(weights)
        payouts = {node: (charge - fee) * w // total for node, w in zip(consensus, weights, strict=True)}
        return payouts, charge - sum(payouts.values())

    def settle_later(self, spec: TaskSpec, outcome: Outcome | None, k: int) -> None:
        """Settle (or release) a finished task in the background; idempotent in the ledger."""
        t = asyncio.create_task(self.settle(spec, outcome, k), name=f"settle-{spec.id}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def settle(self, spec: TaskSpec, outcome: Outcome | None, k: int) -> int:
        if not billed(spec.session.owner) or self.worst_case(spec) == 0:
            return 0
        try:
            charge = self.charge(spec, outcome, k) if outcome is not None else 0
            if charge == 0 or outcome is None or not outcome.consensus:
                await self.ledger.release(spec.id, reason="no verified answer")
                return 0
            payouts, fee = self.split(charge, outcome.consensus, token=outcome.mode == "token")
            settlement = await self.ledger.settle(spec.id, payouts, treasury_fee=fee)
            return int(settlement.charged)
        except LedgerError:
            log.exception("settlement failed task_id=%s (the hold stays; it is settled on restart)", spec.id)
            return 0

    async def settle_recorded(self, task_id: str, owner: str, result: dict[str, Any]) -> None:
        """Settle a task answered before a restart, from its recorded verification block."""
        if not billed(owner):
            return
        charge, consensus = int(result.get("cost") or 0), list(result.get("consensus") or [])
        try:
            if charge == 0 or not consensus:
                await self.ledger.release(task_id, reason="no verified answer")
                return
            payouts, fee = self.split(charge, consensus, token=result.get("mode") == "token")
            await self.ledger.settle(task_id, payouts, treasury_fee=fee)
        except (LedgerError, NotFound):
            log.exception("settlement on recovery failed task_id=%s", task_id)

    async def reward_epoch(self, node: str, validator: str) -> None:
        """Network work pays from the reward pool, once per account per epoch (the ledger keeps that promise)."""
        epoch = int(time.time()) // self.config.epoch_s
        for account, amount, why in (
            (node, self.config.node_reward, "served network tasks"),
            (validator, self.config.validator_reward, "ran network tasks"),
        ):
            if amount <= 0:
                continue
            try:
                await self.ledger.reward(account, amount, epoch, reason=why)
            except LedgerError as exc:  # an empty reward pool: no reward, no harm
                log.info("no reward account=%s epoch=%d reason=%s", account, epoch, exc.message)

    def reward_later(self, node: str, validator: str) -> None:
        t = asyncio.create_task(self.reward_epoch(node, validator), name=f"reward-{node}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def slash(self, node: str, kind: str, task_id: str | None) -> int:
        if kind not in CHEATS:
            return 0
        try:
            amount = int(
                await self.ledger.slash(node, self.config.slash_fraction, reason=kind, task_id=task_id)
            )
        except LedgerError as exc:
            log.warning("slash failed node=%s kind=%s error=%s", node, kind, exc.message)
            return 0
        log.warning("node slashed node=%s kind=%s amount=%s task_id=%s", node, kind, amount, task_id)
        return amount

    def start_checkpoints(
        self, identity: Identity, path: Path, interval_s: float = CHECKPOINT_INTERVAL_S
    ) -> None:
        """Sign the ledger's chain heads every ``interval_s`` into ``path`` (see ``ledger.checkpoint``), and
        once more in ``drain``."""
        self._anchor = (identity, path)
        if self._checkpoints is None:
            self._checkpoints = asyncio.create_task(
                self._checkpoint_loop(interval_s), name="ledger-checkpoints"
            )

    async def _checkpoint_loop(self, interval_s: float) -> None:
        while True:
            await self.checkpoint()
            await asyncio.sleep(interval_s)

    async def checkpoint(self) -> None:
        if self._anchor is None:
            return
        identity, path = self._anchor
        try:
            cp = await self.ledger.write_checkpoint(identity, path)
        except (LedgerError, OSError):
            log.exception("ledger checkpoint not written path=%s", path)
            return
        if cp is not None:
            log.debug("ledger checkpoint written path=%s heads=%s", path, cp.heads)

    async def drain(self) -> None:
        """Finish the background settlements, then sign a last checkpoint."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
            await self.checkpoint()


def _token_charge(price: int, verifiers: int) -> int:
    """Token mode: the generation's price plus ``VERIFY_BPS`` of it per verifier (rounded up)."""
    return -(-price * (10_000 + verifiers * VERIFY_BPS) // 10_000)
