"""The session queue: one FIFO per session, and a global scheduler that starts tasks fairly across sessions.

A task starts when enough distinct miners serving its model have free capacity (min(k, miners serving it)); the
hub's capacity accounting guarantees no miner ever holds more concurrent tasks than it advertised. Sessions are
served round-robin, so one busy session cannot starve another. A task that waits past the queue timeout fails
with 503; a model no connected miner serves fails at once with 503 too (the model may come back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hivemesh.errors import NoMinerAvailable
from hivemesh.router.billing import billed
from hivemesh.router.domain import TaskSpec
from hivemesh.router.hub import MinerHub, MinerLink

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Ticket:
    spec: TaskSpec
    start: Callable[[], None]  # reserves miners and launches the task run (synchronous: admission is atomic)
    enqueued: float = field(default_factory=time.monotonic)
    started: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Scheduler:
    def __init__(self, hub: MinerHub, *, queue_timeout_s: float) -> None:
        self.hub = hub
        self.queue_timeout_s = queue_timeout_s
        self.queues: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
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

    def eligible(self, spec: TaskSpec) -> list[MinerLink]:
        serving = self.hub.serving(
            spec.model, spec.session.sla, network=spec.network, billed=billed(spec.session.owner)
        )
        if spec.target is not None:
            serving = [ln for ln in serving if ln.node == spec.target]
        return serving

    def ready(self, spec: TaskSpec) -> bool:
        serving = self.eligible(spec)
        if not serving:
            return False
        need = min(spec.session.generators, len(serving))
        return sum(1 for ln in serving if ln.free >= 1) >= need

    async def enqueue(self, ticket: Ticket) -> None:
        """Queue a task and return once it has started (or raise NoMinerAvailable)."""
        spec = ticket.spec
        if not self.hub.serving(spec.model):
            raise NoMinerAvailable(f"no connected miner serves {spec.model!r}", retry_after=5)
        if not self.eligible(spec):
            if spec.target is not None:
                raise NoMinerAvailable(
                    f"node {spec.target} is not connected or does not serve {spec.model!r}"
                )
            rep = self.hub.reputation
            why = rep.explain_sla(spec.session.sla) if rep is not None else "no eligible miner"
            raise NoMinerAvailable(f"no miner can serve this session now: {why}", retry_after=10)
        sid = ticket.spec.session.id
        if not self.queues.get(sid) and self.ready(ticket.spec):  # fast path: nothing ahead, capacity free
            ticket.start()
            return
        self.queues.setdefault(sid, deque()).append(ticket)
        self._wake.set()
        await ticket.started

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
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
                    if not t.started.done():
                        t.started.set_exception(
                            NoMinerAvailable(
                                f"no miner for {t.spec.model!r} became free within {self.queue_timeout_s:.0f}s",
                                retry_after=2,
                            )
                        )
                if not q:
                    del self.queues[sid]
                    continue
                if self.ready(q[0].spec):
                    t = q.popleft()
                    self.queues.move_to_end(sid)  # round-robin: this session goes to the back
                    if not q:
                        del self.queues[sid]
                    try:
                        t.start()
                    except Exception as exc:
                        t.started.set_exception(exc)
                    else:
                        t.started.set_result(None)
                    progressed = True
                    break
