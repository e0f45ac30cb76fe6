"""The router's side of the cognitive module: what a validator (oracle) may do to the nodes of this router.

* **Leadership**: validators take turns through the ``LEADER_LEASE``; only its live holder may ping, run network
  tasks and report, so two validators never double-count. The lease is the network's (in the store every router
  shares), the gate is the router's: while the leader holds the lease through this router, user work here goes
  only to nodes validated since they (re)joined (``MinerHub.validation_until``); a router without a validator,
  or whose validator follows, is unaffected.
* **L1 liveness**: a Ping on the miner's link, answered by its Pong. A miss is a strike and a timeout on the
  node's record; ``max_missed_pings`` in a row and the router cuts the link: the node is offline and the runner
  reassigns its in-flight work to other miners.
* **L2 capability and canary tasks**: a session of k = 1, m = 1, mode ``exact`` targeted at one node, through the
  same precommit/commit flow as user tasks (the miner cannot tell them apart). The runner records the protocol
  counters; the validator's report gives the verdict: agreement counters, the level move, and the node's
  validated flag.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from hivemesh.core.reputation import Counters
from hivemesh.errors import Conflict, HivemeshError, InvalidRequest, NotFound, Timeout
from hivemesh.protocol import wire
from hivemesh.protocol.network import (
    LEADER_LEASE,
    LeaseReply,
    NodeInfo,
    NodeList,
    PingReply,
    ReportReply,
    ReportRequest,
    TaskReply,
    TaskRequest,
)
from hivemesh.router.domain import SessionSpec, TaskSpec
from hivemesh.router.hub import MinerLink
from hivemesh.router.leases import Leases
from hivemesh.router.service import RouterService, new_task_id

log = logging.getLogger(__name__)

NETWORK_SESSION = "ses_network"  # the session id network tasks are recorded under (not a user's session)
MAX_AWAITING = 10_000  # network tasks remembered until their report


@dataclass
class _Misses:
    link: MinerLink  # the connection they were counted on: a new connection starts at 0
    count: int = 0


class Oracle:
    def __init__(self, service: RouterService, *, max_missed_pings: int = 3) -> None:
        self.service = service
        self.hub = service.hub
        self.leases = Leases(service.store)
        self.max_missed_pings = max_missed_pings
        self._misses: dict[str, _Misses] = {}
        self._awaiting: OrderedDict[str, tuple[str, str]] = OrderedDict()  # task id -> (node, validator)

    # ------------------------------------------------------------------ leadership

    async def lease(self, validator: str, name: str, ttl_s: float) -> LeaseReply:
        lease = await self.leases.acquire(name, validator, ttl_s)
        granted = ttl_s > 0 and lease.held_by(validator)
        if name == LEADER_LEASE:
            # The lease is the network's (one store for every router); the gate on user work is this router's:
            # only while the leader works through this router, validating its nodes. A follower asking here
            # changes nothing, or a router whose validator follows would refuse every user (its nodes are never
            # validated: only the leader validates).
            if granted:
                self.hub.validation_until = lease.expires_at
            elif lease.holder == validator:  # given up, or run out
                self.hub.validation_until = min(self.hub.validation_until, lease.expires_at)
        return LeaseReply(granted=granted, holder=lease.holder, expires_at=lease.expires_at)

    async def require_leader(self, validator: str) -> None:
        lease = await self.leases.get(LEADER_LEASE)
        if not lease.held_by(validator):
            raise Conflict(
                f"{validator} does not hold the {LEADER_LEASE!r} lease (holder: {lease.holder}); "
                "only the leading validator may act on nodes"
            )

    # ------------------------------------------------------------------ L1 liveness

    async def ping(self, node: str, timeout_s: float) -> PingReply:
        link = self._link(node)
        nonce = secrets.token_hex(16)
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.hub.pings[nonce] = (node, pong)
        t0 = time.monotonic()
        try:
            answered = await link.send(wire.Ping(nonce=nonce)) and await _within(pong, timeout_s)
        finally:
            self.hub.pings.pop(nonce, None)
        misses = self._misses.get(node)
        if misses is None or misses.link is not link:
            misses = self._misses[node] = _Misses(link)
        if answered:
            misses.count = 0
            return PingReply(ok=True, rtt_ms=round((time.monotonic() - t0) * 1000, 3))
        misses.count += 1
        self.hub.strike(link, "ping_missed", None, f"no pong within {timeout_s:g}s ({misses.count} in a row)")
        self.service.reputation.record(node, Counters(timeouts=1), None)
        offline = misses.count >= self.max_missed_pings
        if offline:
            why = f"missed {misses.count} pings in a row"
            self.service.store.node_event(node, "offline", None, why)
            log.warning("node offline node=%s reason=%s", node, why)
            del self._misses[node]
            if self.hub.links.get(node) is link:  # not a newer connection of the same node
                await self.hub.disconnect(node, why)
        return PingReply(ok=False, misses=misses.count, offline=offline)

    # ------------------------------------------------------------------ L2 capability and canary tasks

    async def run_task(self, validator: str, req: TaskRequest) -> TaskReply:
        if not req.messages and req.prompt is None:
            raise InvalidRequest("give messages or a prompt", param="messages")
        defaults = self.service.config.defaults
        session = SessionSpec(
            id=NETWORK_SESSION,
            owner="network",
            redundancy=1,
            quorum=1,
            mode="exact",
            threshold=defaults.threshold,
            ack_timeout_s=min(defaults.ack_timeout_s, req.timeout_s),
            precommit_timeout_s=req.timeout_s,
            commit_timeout_s=defaults.commit_timeout_s,
            max_tokens=req.max_tokens,
        )
        params = wire.SamplingParams(
            temperature=req.temperature,
            max_tokens=req.max_tokens,
            seed=secrets.randbits(31) if req.seed is None else req.seed,
        )
        spec = TaskSpec(
            id=new_task_id(),
            session=session,
            model=req.model,
            kind="chat" if req.messages else "completion",
            params=params,
            messages=req.messages,
            prompt=req.prompt or "",
            stream=req.stream,
            created_at=time.time(),
            network=True,
            target=req.node,
        )
        run = await self.service.submit(spec, stream=req.stream)
        self._awaiting[spec.id] = (req.node, validator)
        while len(self._awaiting) > MAX_AWAITING:
            self._awaiting.popitem(last=False)
        limit = session.ack_timeout_s + session.precommit_timeout_s + session.commit_timeout_s + 5
        try:
            outcome = await asyncio.wait_for(asyncio.shield(run.answer), limit)
        except TimeoutError:
            raise Timeout(f"network task {spec.id} did not end within {limit:.0f}s") from None
        except HivemeshError as exc:
            return TaskReply(task_id=spec.id, output=None, error=exc.message)
        slot = run.slots.get(req.node)
        commit = slot.commit if slot is not None else None
        elapsed = commit.elapsed_ms if commit is not None else None
        tokens = outcome.usage.completion_tokens
        ttft = None
        if slot is not None and slot.first_delta_at is not None:
            ttft = int((slot.first_delta_at - slot.assigned_at) * 1000)
        return TaskReply(
            task_id=spec.id,
            output=outcome.text,
            usage=outcome.usage,
            elapsed_ms=elapsed,
            tokens_per_s=round(tokens * 1000 / elapsed, 3) if elapsed else None,
            ttft_ms=ttft,
        )

    def report(self, validator: str, req: ReportRequest) -> ReportReply:
        owner = self._awaiting.get(req.task_id)
        if owner is None:
            raise NotFound(
                f"{req.task_id} is not a network task awaiting a report (unknown, or already reported)",
                param="task_id",
            )
        if owner != (req.node, validator):
            raise InvalidRequest(f"{req.task_id} was not run on {req.node} by {validator}", param="node")
        del self._awaiting[req.task_id]
        node = req.node
        delta = Counters(in_consensus=1) if req.success else Counters(dissents=1)
        rep = self.service.reputation
        rep.record(node, delta, req.success, task_id=req.task_id)
        kind = f"{req.kind}_{'pass' if req.success else 'fail'}"
        self.service.store.node_event(node, kind, req.task_id, req.detail)
        if req.success and self.service.billing is not None:
            self.service.billing.reward_later(node, validator)
        link = self.hub.links.get(node)
        if link is not None:
            if link.validated != req.success:
                log.info(
                    "node %s node=%s by=%s", "validated" if req.success else "invalidated", node, validator
                )
            link.validated = req.success
        return ReportReply(
            node=node,
            level=rep.level(node),
            quarantined=rep.is_quarantined(node),
            validated=link is not None and link.validated,
        )

    # ------------------------------------------------------------------ views

    def nodes(self, *, pending_only: bool = False) -> NodeList:
        rep = self.service.reputation
        return NodeList(
            data=tuple(
                NodeInfo(
                    node=ln.node,
                    models=tuple(sorted(ln.models)),
                    validated=ln.validated,
                    level=rep.level(ln.node),
                    quarantined=rep.is_quarantined(ln.node),
                    connected_at=ln.connected_at,
                )
                for ln in list(self.hub.links.values())
                if not ln.closed and not (pending_only and ln.validated)
            )
        )

    def _link(self, node: str) -> MinerLink:
        link = self.hub.links.get(node)
        if link is None or link.closed:
            raise NotFound(f"node {node} is not connected", param="node")
        return link


async def _within(fut: asyncio.Future[None], timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(fut, timeout_s)
    except TimeoutError:
        return False
    return True
