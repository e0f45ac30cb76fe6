"""The session queue: one FIFO per session, and a global scheduler that starts tasks fairly across sessions.

A task starts when enough distinct miners eligible for it have free capacity (min(k, eligible miners); counted by
the hub's node pool indexes, O(1), never by a scan of the connected miners); the
hub's capacity accounting guarantees no miner ever holds more concurrent tasks than it advertised. Sessions are
served round-robin, so one busy session cannot starve another. A task that waits past the queue timeout fails
with 503; a model no connected miner serves fails at once with 503 too (the model may come back).

In a cluster each session's queue lives on one router at a time, its owner (``router.session_queues``, the
``gate``): a router that is not the owner forwards its ticket there and waits for the owner's grant, so a session's
tasks wait in one FIFO whichever router they came through. A ticket queued here for another router (``origin``)
only holds a place: starting it grants it to that router, which starts it (or answers busy: it goes back to the
head of its queue for ``HOLD_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hivemesh.errors import NoMinerAvailable
from hivemesh.router.billing import billed
from hivemesh.router.domain import TaskSpec
from hivemesh.router.hub import MinerHub
from hivemesh.router.pool import PoolClass

log = logging.getLogger(__name__)
RESYNC_S = 5.0  # how often every node is judged again (scores' rolling windows, validators' verdicts)
HOLD_S = 0.1  # a session whose head ticket another router just answered busy for waits this long


class Gate(Protocol):
    """Where a session's queue lives in a cluster (``router.session_queues``)."""

    async def elsewhere(self, ticket: Ticket) -> bool:
        """True once ``ticket`` was queued at another router and started through it (raises as ``enqueue``);
        False: this router owns the session's queue, queue it here."""
        ...

    def changed(self, session_id: str) -> None:
        """The session's queue here became empty, or not."""
        ...


@dataclass(eq=False)
class Ticket:
    spec: TaskSpec
    start: Callable[[], None]  # reserves miners and launches the task run (synchronous: admission is atomic)
    enqueued: float = field(default_factory=time.monotonic)
    started: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    origin: str | None = None  # the router holding the caller, when it is not this one (a place held here)

    def launch(self) -> None:
        """Start the task now; its caller hears that it started, or why it could not."""
        try:
            self.start()
        except Exception as exc:
            self.started.set_exception(exc)
        else:
            self.started.set_result(None)

    def expire(self, queue_timeout_s: float) -> None:
        """Its caller hears that no miner became free in time (503)."""
        self.started.set_exception(
            NoMinerAvailable(
                f"no miner for {self.spec.model!r} became free within {queue_timeout_s:.0f}s", retry_after=2
            )
        )


class Scheduler:
    def __init__(self, hub: MinerHub, *, queue_timeout_s: float) -> None:
        self.hub = hub
        self.queue_timeout_s = queue_timeout_s
        self.queues: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.gate: Gate | None = None  # set in a cluster: the session queues' owners
        self._held: dict[str, float] = {}  # session id -> monotonic time its queue may dispatch again
        hub.listeners.append(self._wake.set)

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def depth_of(self, session_id: str) -> int:
        return len(self.queues.get(session_id, ()))

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    def eligible(self, spec: TaskSpec) -> PoolClass:
        """The node pool class the task draws from (``members``: eligible; ``index``: those with a free slot)."""
        return self.hub.eligible(
            self.hub.eligibility(
                spec.model, spec.session.sla, network=spec.network, billed=billed(spec.session.owner)
            )
        )

    def has_eligible(self, spec: TaskSpec) -> bool:
        cls = self.eligible(spec)
        return spec.target in cls.members if spec.target is not None else len(cls) > 0

    def ready(self, spec: TaskSpec) -> bool:
        cls = self.eligible(spec)
        if spec.target is not None:
            link = self.hub.link(spec.target) if spec.target in cls.members else None
            return link is not None and link.free >= 1
        if not cls.members:
            return False
        return cls.free >= min(spec.session.generators, len(cls))

    async def enqueue(self, ticket: Ticket) -> None:
        """Queue a task and return once it has started (or raise NoMinerAvailable)."""
        spec = ticket.spec
        if not self.hub.pool.serves(spec.model):
            raise NoMinerAvailable(f"no connected miner serves {spec.model!r}", retry_after=5)
        if not self.has_eligible(spec):
            if spec.target is not None:
                raise NoMinerAvailable(
                    f"node {spec.target} is not connected or does not serve {spec.model!r}"
                )
            rep = self.hub.reputation
            why = rep.explain_sla(spec.session.sla) if rep is not None else "no eligible miner"
            raise NoMinerAvailable(f"no miner can serve this session now: {why}", retry_after=10)
        if (
            self.gate is not None
            and ticket.origin is None
            and not spec.network
            and spec.target is None
            and await self.gate.elsewhere(ticket)
        ):
            return
        sid = ticket.spec.session.id
        if not self.queues.get(sid) and self.ready(ticket.spec):  # fast path: nothing ahead, capacity free
            ticket.start()
            return
        self._queue(sid).append(ticket)
        self._wake.set()
        await ticket.started

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
            if time.monotonic() - self.hub.pool.synced_at > RESYNC_S:
                self.hub.resync()
            await self._dispatch()

    async def _dispatch(self) -> None:
        now = time.monotonic()
        progressed = True
        while progressed:
            progressed = False
            for sid in list(self.queues):
                q = self.queues[sid]
                while q and (q[0].started.done() or now - q[0].enqueued > self.queue_timeout_s):
                    t = q.popleft()
                    if t.origin is not None:  # its router times it out and tells its caller
                        t.started.cancel()
                    elif not t.started.done():
                        t.expire(self.queue_timeout_s)
                if not q:
                    self._drop(sid)
                    continue
                if (held := self._held.get(sid)) is not None:
                    if held > now:
                        continue
                    del self._held[sid]
                if self.ready(q[0].spec):
                    t = q.popleft()
                    self.queues.move_to_end(sid)  # round-robin: this session goes to the back
                    if not q:
                        self._drop(sid)
                    t.launch()
                    progressed = True
                    break

    # ------------------------------------------------------------------ a cluster's session queues (the gate)

    def accept(self, ticket: Ticket) -> None:
        """Queue a place for a ticket another router holds (this router owns its session's queue)."""
        self._queue(ticket.spec.session.id).append(ticket)
        self._wake.set()

    def adopt(self, ticket: Ticket) -> None:
        """Queue a ticket of ours that waited at another router (its queue is ours now), in arrival order."""
        q = self._queue(ticket.spec.session.id)
        i = len(q)
        while i > 0 and q[i - 1].enqueued > ticket.enqueued:
            i -= 1
        q.insert(i, ticket)
        self._wake.set()

    def requeue(self, ticket: Ticket) -> None:
        """A granted place its router could not start (busy there): back to the head of its queue, held a moment
        so that the two routers' views of the pool can agree."""
        ticket.started = asyncio.get_running_loop().create_future()
        self._queue(ticket.spec.session.id).appendleft(ticket)
        self.hold(ticket.spec.session.id, HOLD_S)

    def hold(self, session_id: str, seconds: float) -> None:
        """Dispatch nothing of the session's queue for ``seconds`` (0: let it go again now)."""
        if seconds <= 0:
            self._held.pop(session_id, None)
            self._wake.set()
            return
        self._held[session_id] = time.monotonic() + seconds
        asyncio.get_running_loop().call_later(seconds, self._wake.set)

    def withdraw(self, session_id: str) -> list[Ticket]:
        """Give up a session's queue (another router owns it now): its tickets, in order."""
        self._held.pop(session_id, None)
        return list(self.queues.pop(session_id, ()))

    def _queue(self, session_id: str) -> deque[Ticket]:
        """The session's queue, made when it has none (the gate hears that tasks wait now)."""
        q = self.queues.get(session_id)
        if q is None:
            q = self.queues[session_id] = deque()
            if self.gate is not None:
                self.gate.changed(session_id)
        return q

    def _drop(self, session_id: str) -> None:
        del self.queues[session_id]
        if self.gate is not None:
            self.gate.changed(session_id)
