"""Task ownership in a cluster: one router runs each task, held by an expiring lease on the broker.

``task:<id>`` names the router running a task; the owner renews the leases of every task it runs every
``LEASE_RENEW_S``. A task in the durable record that is not finished, older than a lease, and whose lease has
expired (its router died) is taken by whoever sets the key first (``SET NX``) and re-dispatched from its row,
exactly as a restarted router re-dispatches its own. So no task runs on two routers at once, and its end and
settlement are written once, by its one owner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from hivemesh.cluster.broker import Broker, text
from hivemesh.store import schema as s
from hivemesh.store.db import Row, Store

log = logging.getLogger(__name__)

LEASE_TTL_S = 5.0  # a task's owner must renew its lease within this
LEASE_RENEW_S = 1.5
SWEEP_S = 2.0  # how often orphaned tasks (their owner's lease expired) are looked for


class TaskLeases:
    def __init__(
        self,
        broker: Broker,
        store: Store,
        *,
        me: str,
        running: Callable[[], set[str]],
        recover: Callable[[Row], Any],
        spawn: Callable[[Any], None],
    ) -> None:
        self.broker = broker
        self.store = store
        self.me = me
        self.running = running  # ids of the tasks this router runs now
        self.recover = (
            recover  # async (task row) -> None: re-dispatch a task taken over (or end an answered one)
        )
        self.spawn = spawn
        self.taken_over = 0  # tasks this router took over from a dead one
        self._swept = 0.0

    async def renew(self) -> None:
        ids = self.running()
        if ids:
            pipe = self.broker.redis.pipeline(transaction=False)
            for tid in ids:
                pipe.set(self.broker.key("task", tid), self.me, px=int(LEASE_TTL_S * 1000))
            await pipe.execute()

    async def claim(self, task_id: str) -> bool:
        """Take the lease of a task (a new one, or one whose owner is gone): True if it is now ours."""
        key = self.broker.key("task", task_id)
        r = self.broker.redis
        if await r.set(key, self.me, px=int(LEASE_TTL_S * 1000), nx=True):
            return True
        holder = await r.get(key)
        return holder is not None and text(holder) == self.me

    async def sweep(self) -> None:
        """Unfinished tasks whose owner's lease has lapsed: take them over and finish them."""
        mine = self.running()
        # a live owner leases each of its tasks within LEASE_RENEW_S of taking it: one younger than a lease plus
        # that may not have its first lease yet
        old = time.time() - LEASE_TTL_S - LEASE_RENEW_S
        answered = select(s.tasks).where(s.tasks.c.phase == "validated")  # answered, never ended
        for row in [*await self.store.unfinished_tasks(), *await self.store.fetch_all(answered)]:
            if row["id"] in mine or row["created_at"] > old:
                continue
            if not await self.claim(row["id"]):
                continue
            self.taken_over += 1
            log.info("task taken over task_id=%s", row["id"])
            self.spawn(self.recover(row))

    async def step(self) -> None:
        """One turn of the lease loop: renew every lease of ours; now and then, sweep for orphaned tasks."""
        await self.renew()
        now = time.monotonic()
        if now - self._swept >= SWEEP_S:
            self._swept = now
            await self.sweep()
