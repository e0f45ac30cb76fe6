"""Relaying between the routers of a cluster: a task here reaches nodes another router holds, and back.

Each router listens on its own channel (Redis pub/sub, ``relay:<id>``). A task here that draws another router's
node sends through a ``RelayLink`` (``forward``); that router checks the node's capacity, signs the assignment as
the router the miner dialled, sends it, and relays the miner's (already checked) messages back (``Relayed``). A
node with no room after all is answered ``busy`` and the task draws the next node. Messages to one router are
batched: everything posted while a publish is under way goes in the next one.

Other parts of the router use the same channel for their own operations (the session queues' grants): ``handle``
registers a handler for an ``op`` the relay itself does not know.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from hivemesh.cluster.broker import Broker
from hivemesh.protocol import wire
from hivemesh.router.hub import MinerHub, MinerLink
from hivemesh.router.links import RelayLink

log = logging.getLogger(__name__)

RELAYED_KEEP_S = 900.0  # how long a relayed task's routing is kept here (its owner releases the nodes sooner)


@dataclass(eq=False)
class Relayed:
    """A task another router owns, with nodes connected here: their messages go back to the owner."""

    owner: str
    task_id: str
    post: Callable[[str, dict[str, Any]], None]
    nodes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # node -> reservations held
    since: float = field(default_factory=time.monotonic)

    def on_message(self, node: str, msg: wire.FromMiner) -> None:
        self.post(self.owner, {"op": "msg", "node": node, "msg": msg.model_dump(mode="json")})

    def on_disconnect(self, node: str) -> None:
        if node in self.nodes:
            self.post(self.owner, {"op": "gone", "node": node, "task": self.task_id})


class Relay:
    """This router's relay channel: what it sends to other routers' nodes, and what it carries for theirs."""

    def __init__(self, broker: Broker, hub: MinerHub, *, me: str, spawn: Callable[[Any], None]) -> None:
        self.broker = broker
        self.hub = hub
        self.me = me
        self.spawn = spawn  # runs a coroutine in the background (the cluster's task set)
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}  # op -> handler (other modules' ops)
        self._outbox: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._wake = asyncio.Event()

    def start(self) -> None:
        self.broker.subscribe(f"relay:{self.me}", self._on_relay)

    def handle(self, op: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self.handlers[op] = handler

    def post(self, router: str, payload: dict[str, Any]) -> None:
        """Queue ``payload`` (a JSON object with an ``op``) for ``router``'s channel; sent by ``send_loop``."""
        self._outbox[router].append(payload)
        self._wake.set()

    async def forward(self, holder: str, node: str, msg: wire._Msg) -> bool:
        """A RelayLink's send: to the router holding ``node``. A released reservation goes the same way."""
        self.post(holder, {"op": "send", "from": self.me, "node": node, "msg": msg.model_dump(mode="json")})
        return True

    def release(self, link: RelayLink) -> None:
        """This router's reservation of another router's node ended (the hub's release)."""
        if link.refused > 0:  # the holder answered busy: it holds nothing to free
            link.refused -= 1
            return
        self.post(link.holder, {"op": "release", "from": self.me, "node": link.node})

    async def send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            box, self._outbox = self._outbox, defaultdict(list)
            try:
                pipe = self.broker.redis.pipeline(transaction=False)
                for router, msgs in box.items():
                    pipe.publish(self.broker.key(f"relay:{router}"), json.dumps(msgs))
                await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("relay publish failed error=%s", str(exc)[:200])

    def _on_relay(self, data: bytes) -> None:
        for ev in json.loads(data):
            try:
                self._relay_one(ev)
            except Exception:
                log.exception("bad relay message op=%s", ev.get("op"))

    def _relay_one(self, ev: dict[str, Any]) -> None:
        op = ev["op"]
        if op == "msg":  # a miner's message for a task of ours, checked by the router holding it
            msg = wire.decode_from_miner(json.dumps(ev["msg"]))
            if isinstance(msg, wire.TaskFailed) and msg.code == wire.BUSY:
                link = self.hub.remote.get(ev["node"])
                if link is not None:
                    link.refused += 1  # its holder reserved nothing: the release that follows stays here
            self.hub.deliver(ev["node"], msg)
        elif op == "gone":
            run = self.hub.runs.get(ev["task"])
            if run is not None:
                run.on_disconnect(ev["node"])
        elif op == "send":
            self._send_to_node(ev["from"], ev["node"], wire.decode_to_miner(json.dumps(ev["msg"])))
        elif op == "release":
            self._release_for(ev["from"], ev["node"], None)
        elif (handler := self.handlers.get(op)) is not None:
            handler(ev)
        else:
            log.warning("unknown relay op=%s", str(op)[:64])

    def _send_to_node(self, owner: str, node: str, msg: wire.ToMiner) -> None:
        task_id = getattr(msg, "task_id", None)
        link = self.hub.links.get(node)
        if isinstance(msg, wire.Assign | wire.Verify):
            assert task_id is not None
            if link is None or link.closed or self.hub.reserve(node) is None:
                why = "not connected here" if link is None or link.closed else "no free slot"
                failed = wire.TaskFailed(task_id=task_id, message=f"node busy: {why}", code=wire.BUSY)
                self.post(owner, {"op": "msg", "node": node, "msg": failed.model_dump(mode="json")})
                return
            relayed = self.hub.relayed.get(task_id)
            if not isinstance(relayed, Relayed):
                relayed = Relayed(owner, task_id, self.post)
                self.hub.relayed[task_id] = relayed
            relayed.nodes[node] += 1
        if link is None or link.closed:
            if task_id is not None:
                self.post(owner, {"op": "gone", "node": node, "task": task_id})
            return
        self.spawn(self._send(link, msg))

    async def _send(self, link: MinerLink, msg: wire._Msg) -> None:
        await link.send(msg)

    def _release_for(self, owner: str, node: str, task_id: str | None) -> None:
        """Give back one reservation ``owner`` held on ``node`` (the oldest of its relayed tasks that holds one)."""
        for tid, relayed in list(self.hub.relayed.items()):
            if not isinstance(relayed, Relayed) or relayed.owner != owner or relayed.nodes.get(node, 0) < 1:
                continue
            if task_id is not None and tid != task_id:
                continue
            relayed.nodes[node] -= 1
            link = self.hub.links.get(node)
            if link is not None:
                self.hub.release(link)
            return

    def owners_gone(self, dead: set[str]) -> None:
        """Routers died: cancel what they had running on nodes here and free those slots."""
        for tid, relayed in list(self.hub.relayed.items()):
            if not isinstance(relayed, Relayed) or relayed.owner not in dead:
                continue
            for node, held in relayed.nodes.items():
                link = self.hub.links.get(node)
                if link is None:
                    continue
                for _ in range(held):
                    self.hub.release(link)
                self.spawn(self._send(link, wire.Cancel(task_id=tid, reason="its router is gone")))
            del self.hub.relayed[tid]

    def purge(self) -> None:
        """Forget the routing of relayed tasks that ended long ago (they hold no reservation here)."""
        cutoff = time.monotonic() - RELAYED_KEEP_S
        for tid, relayed in list(self.hub.relayed.items()):
            if isinstance(relayed, Relayed) and relayed.since < cutoff and not any(relayed.nodes.values()):
                del self.hub.relayed[tid]
