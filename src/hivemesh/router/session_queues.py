"""One queue per session in the whole cluster: the router that owns it orders the session's waiting tasks.

A session's tasks may come through any router. Each router queueing them on its own would give a session one FIFO
per router (tasks overtaking each other, and a session served once per router in the round-robin). So each
session queue has one owning router at a time, named by an expiring lease on the broker (``sq:<session>``): taken
by the first router that queues a task of the session (or when the owner's lease lapsed, or its heartbeat did),
renewed by the owner every ``RENEW_S`` while it has queued the session's tasks in the last ``KEEP_S``, and taken
over by another router only after it expires or its owner is dead.

While the broker is unreachable a router queues its tasks itself, as a router on its own does (the leases and
places are back within a renew period of the broker's return).

The tasks stay where their callers are. A router that does not own the session's queue keeps its ticket. While
nothing of the session waits at the owner (the owner's flag ``sqw:<session>``, read with the lease) and the pool
has room, it starts the task at once; otherwise it sends the owner a place in the queue (``sq.put``) over the relay. The owner queues that place with its own tickets, in
arrival order; when the place reaches the head and the pool has room, the owner grants it (``sq.grant``) and the
ticket's router starts the task (its own draw, its own task lease: a task still runs on one router, once) and says
so (``sq.done``), or answers ``sq.busy`` when its own view of the pool has no room after all (the place goes back
to the head, held a moment). The waiting router puts its place again every ``PUT_AGAIN_S``: the owner ignores a
place it already has, and one lost with a message or a restarted owner comes back. When the owner dies (its
heartbeat lapses), the next put takes the lease, and a router that becomes the owner queues its own waiting
tickets itself, in arrival order. Every router times out its own tickets (``sq.drop`` frees their places), and
the owner drops the places of a router whose heartbeat lapsed (its callers are gone with it; its tasks in the
durable record are taken over after their leases lapse).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from hivemesh.cluster.broker import Broker, text
from hivemesh.protocol.wire import SamplingParams
from hivemesh.router.cluster import forever
from hivemesh.router.domain import SessionSpec, TaskSpec
from hivemesh.router.relay import Relay
from hivemesh.router.scheduler import Scheduler, Ticket

log = logging.getLogger(__name__)

TTL_S = 5.0  # a session queue's lease lives this long unless renewed
RENEW_S = 1.0  # the owner renews its queues' leases this often
KEEP_S = 30.0  # ... while it queued one of the session's tasks this recently (later tasks skip the broker)
PUT_AGAIN_S = 2.0  # a router waiting on another's queue sends its place again this often
GRANT_WAIT_S = 5.0  # a granted place its router never answered for is forgotten after this

# KEYS[1] the session queue's lease, KEYS[2] its "tasks wait" flag; ARGV: this router, the TTL (ms), the heartbeat
# key prefix (``router:``). Returns {owner, flag}: the live router that holds the lease, or this router once it
# holds it; and 1 while the owner has tasks of the session waiting.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. cur) == 1 then
  return {cur, redis.call('EXISTS', KEYS[2])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], redis.call('EXISTS', KEYS[2])}
"""


@dataclass(eq=False)
class Waiting:
    """A ticket of ours whose place is in another router's queue."""

    ticket: Ticket
    owner: str
    put_at: float = field(default_factory=time.monotonic)


class SessionQueues:
    """This router's side of the cluster's session queues (the scheduler's ``gate``)."""

    def __init__(
        self, broker: Broker, relay: Relay, scheduler: Scheduler, *, me: str, spawn: Callable[[Any], object]
    ) -> None:
        self.broker = broker
        self.relay = relay
        self.scheduler = scheduler
        self.me = me
        self.spawn = spawn
        self.queue_timeout_s = scheduler.queue_timeout_s
        self._acquire = broker.redis.register_script(_ACQUIRE)
        self.owned: dict[str, float] = {}  # session id -> monotonic time our lease surely lives until
        self.used: dict[str, float] = {}  # session id -> when we last queued one of its tasks (as owner)
        self.waiting: dict[str, Waiting] = {}  # task id -> our ticket waiting at another router's queue
        # sessions whose queue here became empty or not since the flags were written
        self._dirty: set[str] = set()
        self._flag_wake = asyncio.Event()
        self.places: dict[str, Ticket] = {}  # task id -> another router's place in one of our queues
        self.granted: dict[str, tuple[Ticket, float]] = {}  # task id -> a place granted, not yet answered for
        for op, handler in (
            ("sq.put", self._on_put),
            ("sq.grant", self._on_grant),
            ("sq.done", self._on_done),
            ("sq.busy", self._on_busy),
            ("sq.drop", self._on_drop),
            ("sq.moved", self._on_moved),
        ):
            relay.handle(op, handler)

    # ------------------------------------------------------------------ ownership

    async def _ask(self, session_id: str, client: Any = None) -> Any:
        """Run the acquire script for the session (on ``client``, a pipeline, when given)."""
        return await self._acquire(
            keys=[self.broker.key("sq", session_id), self.broker.key("sqw", session_id)],
            args=[self.me, int(TTL_S * 1000), self.broker.key("router", "")],
            client=client,
        )

    def _learned(self, session_id: str, holder: str, now: float) -> None:
        """What the broker said about the session's queue: ours (until when, surely), or not."""
        if holder == self.me:
            self.owned[session_id] = now + TTL_S - RENEW_S
        else:
            self.owned.pop(session_id, None)

    async def owner(self, session_id: str) -> str:
        """The router that owns the session's queue (taking it when it is free, lapsed or its owner is dead)."""
        return (await self._owner(session_id))[0]

    async def _owner(self, session_id: str) -> tuple[str, bool]:
        """The owner, and whether tasks wait in its queue (False for ours: we know better than the flag)."""
        now = time.monotonic()
        if self.owned.get(session_id, 0.0) > now:
            return self.me, False
        raw = await self._ask(session_id)
        holder, waits = text(raw[0]), bool(int(raw[1]))
        self._learned(session_id, holder, now)
        return holder, waits

    def changed(self, session_id: str) -> None:
        """The scheduler's queue of the session became empty or not: the flag other routers read follows."""
        self._dirty.add(session_id)
        self._flag_wake.set()

    async def flag_loop(self) -> None:
        """Write the "tasks wait" flags of our queues as they change (the latest state of each, in one pipeline)."""
        while True:
            await self._flag_wake.wait()
            self._flag_wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                await self._write_flags(dirty)
            except Exception as exc:  # the flag is a hint: a stale one costs a round trip, or one FIFO slip
                log.warning("session queue flags not written error=%s", str(exc)[:200])

    async def _write_flags(self, sids: set[str]) -> None:
        if not sids:
            return
        pipe = self.broker.redis.pipeline(transaction=False)
        for sid in sids:
            if sid not in self.owned:  # the flag is its owner's to write
                continue
            key = self.broker.key("sqw", sid)
            if self.scheduler.queues.get(sid):
                pipe.set(key, "1", px=int(TTL_S * 1000))
            else:
                pipe.delete(key)
        await pipe.execute()

    async def renew(self) -> None:
        """Renew the leases of the queues we hold (and of sessions used lately); a queue another router took
        (after a broker restart, or a pause longer than the lease) is handed over: our tickets wait there, the
        other routers' places are sent back to them."""
        now = time.monotonic()
        for sid, at in list(self.used.items()):
            if now - at > KEEP_S and sid not in self.scheduler.queues:
                del self.used[sid]
                self.owned.pop(sid, None)
        try:
            await self._renew_leases(now)
        except (RedisError, OSError) as exc:  # they lapse; taken again when the broker is back
            log.warning("session queue leases not renewed error=%s", str(exc)[:200])
        # the flags of queues with tasks waiting live as long as a lease
        self._dirty.update(self.scheduler.queues)
        self._flag_wake.set()
        for tid, (_, at) in list(self.granted.items()):
            if now - at > GRANT_WAIT_S:  # its router never answered: gone, or the grant was lost
                self._forget_place(tid)
        for tid, ticket in list(self.places.items()):  # places the scheduler timed out
            if ticket.started.done() and tid not in self.granted:
                del self.places[tid]
        origins = sorted({t.origin for t in self.places.values() if t.origin is not None})
        if origins:
            try:
                beats = await self.broker.redis.mget([self.broker.key("router", o) for o in origins])
            except (RedisError, OSError):
                beats = [b"?"] * len(origins)  # unknown: alive, until the broker says otherwise
            dead = {o for o, beat in zip(origins, beats, strict=True) if beat is None}
            if dead:
                self.routers_gone(dead)
        await self._refresh_waiting()

    async def _renew_leases(self, now: float) -> None:
        sids = sorted(set(self.used) | set(self.scheduler.queues))
        if sids:
            pipe = self.broker.redis.pipeline(transaction=False)
            for sid in sids:
                await self._ask(sid, client=pipe)
            answers = await pipe.execute()
            for sid, raw in zip(sids, answers, strict=True):
                holder = text(raw[0])
                self._learned(sid, holder, now)
                if holder != self.me:
                    self.used.pop(sid, None)
                    self._hand_over(sid, holder)

    def _hand_over(self, sid: str, holder: str) -> None:
        for ticket in self.scheduler.withdraw(sid):
            if ticket.started.done():
                continue
            if ticket.origin is None:
                self.waiting[ticket.spec.id] = Waiting(ticket, holder, put_at=0.0)  # put at once
            else:
                self.places.pop(ticket.spec.id, None)
                self.relay.post(ticket.origin, {"op": "sq.moved", "task": ticket.spec.id})
        log.info("session queue moved session_id=%s owner=%s", sid, holder)

    # ------------------------------------------------------------------ a ticket of ours

    async def elsewhere(self, ticket: Ticket) -> bool:
        """The scheduler's gate: False when this router owns the session's queue (queue the ticket here); else
        send the owner a place and wait until the ticket started (True), or raise as the scheduler would."""
        sid = ticket.spec.session.id
        try:
            holder, waits = await self._owner(sid)
        except (RedisError, OSError) as exc:  # the broker is away: queue here, on our own, until it is back
            log.warning(
                "session queue owner unknown, queueing here session_id=%s error=%s", sid, str(exc)[:200]
            )
            return False
        if holder == self.me:
            self.used[sid] = time.monotonic()
            return False
        if not waits and self.scheduler.ready(ticket.spec):  # nothing waits there and the pool has room here
            ticket.start()
            return True
        w = self.waiting[ticket.spec.id] = Waiting(ticket, holder)
        self._put(ticket, holder)
        try:
            await ticket.started
        finally:
            if self.waiting.pop(ticket.spec.id, None) is not None:  # its caller is gone: free the place
                self.relay.post(w.owner, {"op": "sq.drop", "task": ticket.spec.id})
        return True

    def _put(self, ticket: Ticket, holder: str) -> None:
        spec = ticket.spec
        self.relay.post(
            holder,
            {
                "op": "sq.put",
                "from": self.me,
                "task": spec.id,
                "model": spec.model,
                "kind": spec.kind,
                "session": dataclasses.asdict(spec.session),
                "age": time.monotonic() - ticket.enqueued,
            },
        )

    async def _refresh_waiting(self) -> None:
        """Time out our waiting tickets; put the others again (or queue them here, once their queue is ours)."""
        now = time.monotonic()
        for tid, w in list(self.waiting.items()):
            t = w.ticket
            if t.started.done():
                self.waiting.pop(tid, None)
            elif now - t.enqueued > self.queue_timeout_s:
                self.waiting.pop(tid, None)
                self.relay.post(w.owner, {"op": "sq.drop", "task": tid})
                t.expire(self.queue_timeout_s)
            elif now - w.put_at >= PUT_AGAIN_S:
                sid = t.spec.session.id
                try:
                    holder = await self.owner(sid)
                except (RedisError, OSError):  # the broker is away (and the relay with it): queue it here
                    holder = self.me
                if tid not in self.waiting or t.started.done():
                    continue
                if holder == self.me:  # its owner is gone: the queue is ours, and so is the ticket's place
                    del self.waiting[tid]
                    self.used[sid] = now
                    self.scheduler.adopt(t)
                    continue
                w.owner, w.put_at = holder, now
                self._put(t, holder)

    def _on_grant(self, ev: dict[str, Any]) -> None:
        tid = str(ev["task"])
        w = self.waiting.get(tid)
        if w is None or w.ticket.started.done():
            self.relay.post(str(ev["from"]), {"op": "sq.done", "task": tid})
            return
        t = w.ticket
        if not self.scheduler.ready(t.spec):
            self.relay.post(str(ev["from"]), {"op": "sq.busy", "task": tid})
            return
        del self.waiting[tid]
        t.launch()
        self.relay.post(str(ev["from"]), {"op": "sq.done", "task": tid})

    def _on_moved(self, ev: dict[str, Any]) -> None:
        w = self.waiting.get(str(ev["task"]))
        if w is not None:
            w.put_at = 0.0  # ask the broker who owns the queue now, at the next refresh

    # ------------------------------------------------------------------ other routers' places in our queues

    def _on_put(self, ev: dict[str, Any]) -> None:
        tid = str(ev["task"])
        if tid in self.places:
            return
        self.spawn(self._accept(ev))

    async def _accept(self, ev: dict[str, Any]) -> None:
        tid, origin = str(ev["task"]), str(ev["from"])
        session = SessionSpec(**ev["session"])
        try:
            holder = await self.owner(session.id)
        except (RedisError, OSError):  # the broker is away: its router puts the place again
            return
        if holder != self.me:
            self.relay.post(origin, {"op": "sq.moved", "task": tid})
            return
        if tid in self.places:
            return
        self.used[session.id] = time.monotonic()
        spec = TaskSpec(
            id=tid, session=session, model=str(ev["model"]), kind=ev["kind"], params=SamplingParams()
        )
        ticket = Ticket(
            spec,
            start=lambda: self._grant(tid, origin),
            enqueued=time.monotonic() - max(0.0, float(ev.get("age", 0.0))),
            origin=origin,
        )
        self.places[tid] = ticket
        self.scheduler.accept(ticket)

    def _grant(self, tid: str, origin: str) -> None:
        """The scheduler starts a place: its router is told to start the task. The session's queue waits for the
        answer (one grant in flight per session), so its tasks start in order and the pool's room is not granted
        twice before the first task's reservations show."""
        ticket = self.places.get(tid)
        if ticket is not None:
            self.granted[tid] = (ticket, time.monotonic())
            self.scheduler.hold(ticket.spec.session.id, GRANT_WAIT_S)
        self.relay.post(origin, {"op": "sq.grant", "from": self.me, "task": tid})

    def _on_done(self, ev: dict[str, Any]) -> None:
        tid = str(ev["task"])
        self._end_grant(tid)
        self.places.pop(tid, None)

    def _on_busy(self, ev: dict[str, Any]) -> None:
        granted = self.granted.pop(str(ev["task"]), None)
        if granted is not None:
            self.scheduler.requeue(granted[0])

    def routers_gone(self, dead: set[str]) -> None:
        """Routers died (their heartbeats lapsed): their places here are dropped, and a session waiting on a
        grant one of them will never answer goes on at once. (Their tasks are taken over from the durable record
        after their leases lapse, by whichever router sweeps first.)"""
        for tid, ticket in list(self.places.items()):
            if ticket.origin in dead:
                self._forget_place(tid)

    def _on_drop(self, ev: dict[str, Any]) -> None:
        self._forget_place(str(ev["task"]))

    def _end_grant(self, tid: str) -> None:
        """The grant of a place was answered (or never will be): its session's queue goes on."""
        granted = self.granted.pop(tid, None)
        if granted is not None:
            self.scheduler.hold(granted[0].spec.session.id, 0.0)

    def _forget_place(self, tid: str) -> None:
        """A place ends (dropped, its router gone, its grant unanswered): a place still queued is cancelled (the
        scheduler drops it when it reaches the head), and a session waiting on its grant goes on."""
        self._end_grant(tid)
        ticket = self.places.pop(tid, None)
        if ticket is not None and not ticket.started.done():
            ticket.started.cancel()


async def renew_forever(queues: SessionQueues) -> None:
    flags = asyncio.create_task(queues.flag_loop(), name="session-queue-flags")
    try:
        await forever(RENEW_S, queues.renew)
    finally:
        flags.cancel()
