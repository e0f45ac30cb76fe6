"""The validator (oracle): keeps the network honest by testing its nodes, signed with its own key.

One asyncio task per duty, all in one ``TaskGroup``:

* **lease**: ask for (or renew) the router's leader lease every ``renew_every_s``; only the leader acts, and when
  it stops (or dies, and its lease runs out) another validator takes over within a few seconds.
* **L1 liveness**: ping every online node every ``ping_every_s``; the router counts the misses and takes a node
  offline after too many in a row.
* **L2 capability**: every ``l2_every_s``, each online node answers a few checks drawn from the check set (known
  prompts, pure predicates), scored for correctness, tokens/s and latency; each verdict is reported.
* **canaries**: between rounds, a share of the nodes get one question that reads like ordinary user traffic.
* **re-validation**: a node that joined or reconnected is checked before it serves user sessions again.

A node's failure is data (a report), never a crash; a router that is unreachable or refuses a call is logged and
tried again on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx

from hivemesh.errors import Conflict, HivemeshError, ServiceUnavailable
from hivemesh.identity import Identity
from hivemesh.protocol.network import NodeInfo, PingReply, ReportRequest, TaskKind, TaskRequest
from hivemesh.protocol.wire import ChatMessage
from hivemesh.validator.checks import Check, Judgement, judge
from hivemesh.validator.client import RouterClient
from hivemesh.validator.config import ValidatorConfig

log = logging.getLogger(__name__)

_TRANSIENT = (httpx.HTTPError, HivemeshError)


class ValidatorAgent:
    def __init__(self, router_url: str, identity: Identity, config: ValidatorConfig | None = None) -> None:
        self.identity = identity
        self.config = config or ValidatorConfig()
        self.client = RouterClient(router_url, identity, timeout_s=self.config.request_timeout_s)
        self.leading = asyncio.Event()  # set while this validator holds the lease
        self._lease_until = 0.0  # monotonic: when our lease runs out unless renewed
        self._busy: set[str] = set()  # nodes under test right now (one test at a time per node)
        self._rng = random.Random()

    @property
    def address(self) -> str:
        return self.identity.address

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set() and time.monotonic() < self._lease_until

    # ------------------------------------------------------------------ lifecycle

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until cancelled; ``on_ready`` is called once this validator leads and has checked the nodes
        waiting for validation."""
        cfg = self.config
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._lease_loop(), name="validator-lease")
                tg.create_task(self._every(cfg.ping_every_s, self.ping_round), name="validator-l1")
                tg.create_task(
                    self._every(cfg.pending_every_s, self.revalidate_pending, on_ready),
                    name="validator-pending",
                )
                tg.create_task(self._every(cfg.l2_every_s, self.l2_round, delay=True), name="validator-l2")
                tg.create_task(
                    self._every(cfg.canary_every_s, self.canary_round, delay=True), name="validator-canary"
                )
        finally:
            await self._release()
            await self.client.aclose()

    async def _release(self) -> None:
        """Give the lease up at once, so another validator need not wait for it to run out."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        with contextlib.suppress(*_TRANSIENT, TimeoutError):
            await asyncio.wait_for(self.client.lease(0.0), 2.0)

    async def take_lead(self) -> bool:
        """Ask for the lease (or renew it); True while this validator leads."""
        ttl = self.config.lease_ttl_s
        t0 = time.monotonic()
        try:
            reply = await self.client.lease(ttl)
        except _TRANSIENT as exc:
            log.warning("lease call failed error=%s", _short(exc))
        else:
            if reply.granted:
                # the router's clock started the lease after t0: counting from t0 errs on the safe side
                self._lease_until = t0 + ttl
                if not self.leading.is_set():
                    log.info("validator leads address=%s", self.address)
                    self.leading.set()
            elif self.leading.is_set():
                log.info("validator follows address=%s leader=%s", self.address, reply.holder)
                self.leading.clear()
        if self.leading.is_set() and time.monotonic() >= self._lease_until:
            self.leading.clear()  # could not renew in time: someone else may lead now
        return self.is_leader

    async def _lease_loop(self) -> None:
        while True:
            await self.take_lead()
            await asyncio.sleep(self.config.renew_every_s)

    async def _every(
        self,
        interval_s: float,
        action: Callable[[], Awaitable[object]],
        after_first: Callable[[], None] | None = None,
        *,
        delay: bool = False,
    ) -> None:
        """Run ``action`` every ``interval_s`` while leading (a follower waits for the lead)."""
        while True:
            await self.leading.wait()
            if delay:  # give the other duties the first turn after taking the lead
                await asyncio.sleep(interval_s)
                delay = False
                continue
            try:
                await action()
            except Conflict as exc:  # lost the lease between two calls
                log.info("not the leader any more error=%s", _short(exc))
                self.leading.clear()
            except _TRANSIENT as exc:
                log.warning(
                    "validator duty failed duty=%s error=%s", getattr(action, "__name__", action), _short(exc)
                )
            else:
                if after_first is not None:
                    after_first()
                    after_first = None
            await asyncio.sleep(interval_s)

    # ------------------------------------------------------------------ duties

    async def ping_round(self) -> dict[str, PingReply]:
        """L1: ping every online node at once."""
        nodes = (await self.client.nodes()).data
        replies = await asyncio.gather(
            *(self.client.ping(n.node, self.config.ping_timeout_s) for n in nodes), return_exceptions=True
        )
        out: dict[str, PingReply] = {}
        for n, r in zip(nodes, replies, strict=True):
            if isinstance(r, PingReply):
                out[n.node] = r
                if not r.ok:
                    log.warning("missed ping node=%s misses=%d offline=%s", n.node, r.misses, r.offline)
            elif isinstance(r, Exception):
                log.info("ping not made node=%s error=%s", n.node, _short(r))
            else:
                raise r
        return out

    async def l2_round(self) -> dict[str, list[Judgement]]:
        """L2: every online node answers ``l2_checks_per_round`` checks drawn from the set."""
        nodes = (await self.client.nodes()).data
        return await self._test_all(
            nodes, "l2", self._draw(self.config.checks.l2, self.config.l2_checks_per_round)
        )

    async def canary_round(self) -> dict[str, list[Judgement]]:
        """Canaries: a share of the online nodes (at least one) get one user-like question each."""
        nodes = list((await self.client.nodes()).data)
        canaries = self.config.checks.canaries
        if not nodes or not canaries or self.config.canary_share <= 0:
            return {}
        n = min(len(nodes), max(1, round(self.config.canary_share * len(nodes))))
        chosen = self._rng.sample(nodes, n)
        return await self._test_all(chosen, "canary", lambda: [self._rng.choice(canaries)])

    async def revalidate_pending(self) -> dict[str, list[Judgement]]:
        """Nodes that (re)joined since they were last validated answer an L2 round before serving users."""
        nodes = (await self.client.pending()).data
        return await self._test_all(
            nodes, "l2", self._draw(self.config.checks.l2, self.config.l2_checks_per_round)
        )

    def _draw(self, checks: Sequence[Check], k: int) -> Callable[[], list[Check]]:
        return lambda: self._rng.sample(list(checks), min(k, len(checks)))

    async def _test_all(
        self, nodes: Sequence[NodeInfo], kind: TaskKind, draw: Callable[[], list[Check]]
    ) -> dict[str, list[Judgement]]:
        todo = [n for n in nodes if n.node not in self._busy and n.models]
        results = await asyncio.gather(*(self.validate(n, kind, draw()) for n in todo))
        return {n.node: r for n, r in zip(todo, results, strict=True)}

    async def validate(self, node: NodeInfo, kind: TaskKind, checks: Sequence[Check]) -> list[Judgement]:
        """Run ``checks`` on ``node`` one after another and report each verdict. Stops early if the node is gone."""
        if node.node in self._busy:
            return []
        self._busy.add(node.node)
        out: list[Judgement] = []
        try:
            for check in checks:
                if not self.is_leader:
                    break
                try:
                    out.append(await self.test(node.node, node.models[0], kind, check))
                except ServiceUnavailable as exc:  # the node left, or serves nothing now: L1 deals with it
                    log.info("node not testable node=%s error=%s", node.node, _short(exc))
                    break
        finally:
            self._busy.discard(node.node)
        return out

    async def test(self, node: str, model: str, kind: TaskKind, check: Check) -> Judgement:
        """One network task on ``node``, judged and reported."""
        cfg = self.config
        reply = await self.client.task(
            TaskRequest(
                node=node,
                model=model,
                kind=kind,
                messages=(ChatMessage(role="user", content=check.prompt),),
                max_tokens=check.max_tokens,
                temperature=0.0,
                timeout_s=cfg.task_timeout_s,
            )
        )
        verdict = judge(
            check,
            reply.output,
            tokens_per_s=reply.tokens_per_s,
            latency_ms=reply.elapsed_ms,
            error=reply.error,
            limits=cfg.limits,
        )
        report = ReportRequest(
            node=node, task_id=reply.task_id, kind=kind, success=verdict.passed, detail=verdict.detail
        )
        await self.client.report(report)
        log.log(
            logging.INFO if verdict.passed else logging.WARNING,
            "network task node=%s kind=%s task_id=%s passed=%s detail=%s",
            node,
            kind,
            reply.task_id,
            verdict.passed,
            verdict.detail,
        )
        return verdict


def _short(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
