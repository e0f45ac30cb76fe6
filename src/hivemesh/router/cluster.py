"""One network over N routers: presence, relaying and task ownership on the cluster's broker (Redis).

What lives where (and why):

* **Presence** (Redis, expiring): ``router:<id>`` is a heartbeat key with a TTL (``HEARTBEAT_TTL_S``); the hash
  ``nodes`` maps each node to the router holding its connection and what the pool needs (models, capacity, stake
  pool, record, load). An entry counts only while its router's heartbeat lives, so a killed router's nodes vanish
  within the TTL. Joins and leaves are also published on the ``presence`` channel (seen at once); each router
  publishes its nodes' load every ``LOAD_S``; a full re-read every ``RESYNC_S`` (and after a subscription gap)
  repairs anything missed. A node has one connection in the whole cluster (``router.presence``): a router takes a
  node only by claiming its entry atomically, refuses a hello from a node another live router holds (close 4409,
  naming it), and closes its own link to a node whose entry names another live router (the tie-break after a
  broker outage or restart), so one router checks each node's capacity and in-flight count.
* **Relaying** (``router.relay``): assignments and miner messages between routers, one channel per router.
* **Task ownership** (``router.task_leases``): one router runs each task, under an expiring lease; a dead
  router's tasks are taken over after their leases lapse.
* **Session queues** (``router.session_queues``): one router at a time orders each session's waiting tasks.
* **Durable record** (PostgreSQL, shared): tasks, sessions, ledger, reputation. Nothing above needs to survive a
  broker restart: presence and loads are re-announced within seconds; leases are renewed by live owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from hivemesh.cluster.broker import Broker, text
from hivemesh.protocol import wire
from hivemesh.router.hub import MAX_RECORDED, MinerHub, MinerLink
from hivemesh.router.links import RelayLink
from hivemesh.router.presence import Presence, holder_instead
from hivemesh.router.relay import Relay
from hivemesh.router.task_leases import LEASE_RENEW_S, TaskLeases
from hivemesh.store.db import Row, Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # a router renews its heartbeat this often
HEARTBEAT_TTL_S = 4.0  # ... and is dead to the others once it is this late
LOAD_S = 0.25  # nodes' load published this often (only what changed)
RESYNC_S = 5.0  # the whole presence re-read this often


class Cluster:
    """This router's part of the cluster: its presence, its relay channel, its task leases."""

    def __init__(
        self,
        broker: Broker,
        hub: MinerHub,
        store: Store,
        *,
        me: str,
        running: Callable[[], set[str]],
        recover: Callable[[Row], Any],
    ) -> None:
        self.broker = broker
        self.hub = hub
        self.store = store
        self.me = me
        self.r = broker.redis
        self.presence = Presence(broker, me)
        # (node, nonce) of our entries for no link here at the last resync: deleted if still there at the next
        self._orphans: set[tuple[str, str]] = set()
        self._loads: dict[str, int] = {}  # node -> inflight last published
        self._bg: list[asyncio.Task[None]] = []
        self.relay = Relay(broker, hub, me=me, spawn=self._spawn)
        self.leases = TaskLeases(broker, store, me=me, running=running, recover=recover, spawn=self._spawn)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.hub.on_presence = self._presence_changed
        self.hub.claim = self._claim
        self.relay.start()
        self.broker.subscribe("presence", self._on_presence)
        self.broker.on_gap.append(lambda: self._spawn(self._resync()))
        await self._beat()
        for link in list(self.hub.links.values()):
            await self._settle(link)
        await self._resync()
        for loop in (
            self._beat_loop,
            self.relay.send_loop,
            self._load_loop,
            self._resync_loop,
            self._lease_loop,
        ):
            self._bg.append(asyncio.create_task(loop(), name=f"cluster-{loop.__name__}"))

    async def close(self) -> None:
        for t in self._bg:
            t.cancel()
        for t in self._bg:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await t
        with contextlib.suppress(RedisError, OSError):
            mine = list(self.hub.links.values())
            for link in mine:  # only our connections' entries: a node another router holds keeps its own
                await self.presence.forget(link.node, link.nonce)
            await self.r.delete(self.broker.key("router", self.me))
            for link in mine:
                await self._publish_leave(link)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._bg.append(t)
        t.add_done_callback(lambda _: self._bg.remove(t) if t in self._bg else None)

    # ------------------------------------------------------------------ presence

    def _entry(self, link: MinerLink) -> str:
        return json.dumps(
            {
                "router": self.me,
                "nonce": link.nonce,
                "cards": [c.model_dump(mode="json") for c in link.cards],
                "capacity": link.capacity,
                "pool": link.pool,
                "finished": link.finished,
                "validated": link.validated,
                "inflight": link.inflight,
                # what the network-wide views show of a node held here (router.roster)
                "hardware": link.hardware.model_dump(mode="json"),
                "version": link.version,
                "connected_at": link.connected_at,
            }
        )

    def _presence_changed(self, link: MinerLink, joined: bool) -> None:
        self._spawn(self._announce(link, joined))

    async def _announce(self, link: MinerLink, joined: bool) -> None:
        try:
            if joined:
                await self._settle(link)
            else:
                await self.presence.forget(link.node, link.nonce)
                await self._publish_leave(link)
        except (RedisError, OSError) as exc:  # the resync claims (or clears) the entry again
            log.warning("presence not announced node=%s error=%s", link.node, str(exc)[:200])

    async def _publish_leave(self, link: MinerLink) -> None:
        ev = {"op": "leave", "router": self.me, "node": link.node, "nonce": link.nonce}
        await self.broker.publish("presence", json.dumps(ev))

    async def _claim(self, link: MinerLink) -> str | None:
        """The hub's check at hello: the live router that holds ``link``'s node instead (the hello is refused), or
        None once the node's entry is ours. With the broker unreachable the node is taken (the router serves on
        its own) and the tie-break settles it when the broker is back."""
        try:
            held = await self.presence.claim(link.node, self._entry(link))
        except (RedisError, OSError) as exc:
            log.warning("presence claim failed, taking the node node=%s error=%s", link.node, str(exc)[:200])
            return None
        if held is None:
            return None
        self._remote(link.node, held)  # served here through its holder, even if its join was missed
        return str(held["router"])

    async def _settle(self, link: MinerLink) -> None:
        """Make ``link`` the node's one connection in the cluster, or give it up: claim its entry; if another live
        router holds the node (the entry Redis holds names it: the same answer on every router), close this link
        (its tasks fail over) and use that router's through the relay. Announced to the others either way."""
        if link.closed:  # gone before its join was announced: its leave clears the entry
            return
        held = await self.presence.claim(link.node, self._entry(link))
        if held is None:
            entry = json.loads(self._entry(link))
            await self.broker.publish(
                "presence", json.dumps({"op": "join", "node": link.node, "entry": entry})
            )
            return
        holder = str(held["router"])
        log.warning("node held by two routers, this link yields node=%s holder=%s", link.node, holder)
        self._remote(link.node, held)
        await self.hub.hand_over(link, holder)

    def _on_presence(self, data: bytes) -> None:
        ev = json.loads(data)
        op = ev.get("op")
        if op == "join":
            node, entry = ev["node"], ev["entry"]
            self._remote(node, entry)
            own = self.hub.links.get(node)
            if own is not None and holder_instead(self.me, entry, lambda _: True) is not None:
                self._spawn(self._settle(own))  # two links to one node: Redis's entry says which stays
        elif op == "leave":
            held = self.hub.remote.get(ev["node"])
            nonce = ev.get("nonce")
            if held is not None and held.holder == ev.get("router") and nonce in (None, held.nonce):
                self.hub.drop_remote(ev["node"])
        elif op == "load" and ev.get("router") != self.me:
            for node, (inflight, finished) in ev["loads"].items():
                link = self.hub.remote.get(node)
                if link is not None and link.holder == ev["router"]:
                    link.elsewhere = max(0, int(inflight) - link.inflight)
                    link.finished = int(finished)

    def _remote(self, node: str, entry: dict[str, Any]) -> None:
        holder = entry["router"]
        if holder == self.me:
            return
        link = self.hub.remote.get(node)
        if link is not None and link.holder == holder and link.nonce == entry["nonce"]:
            link.elsewhere = max(0, int(entry.get("inflight", 0)) - link.inflight)
            link.validated = bool(entry.get("validated"))
            return
        cards = tuple(wire.ModelCard.model_validate(c) for c in entry["cards"])
        self.hub.add_remote(
            RelayLink(
                node=node,
                nonce=entry["nonce"],
                models=frozenset(c.id for c in cards),
                cards=cards,
                capacity=int(entry["capacity"]),
                pool=int(entry["pool"]),
                finished=int(entry.get("finished", 0)),
                validated=bool(entry.get("validated")),
                holder=holder,
                forward=self.relay.forward,
                elsewhere=int(entry.get("inflight", 0)),
                hardware=_hardware(entry.get("hardware")),
                version=str(entry.get("version", ""))[:MAX_RECORDED],
                connected_at=float(entry.get("connected_at") or time.time()),
            )
        )

    async def _beat(self) -> None:
        await self.r.set(self.broker.key("router", self.me), str(time.time()), px=int(HEARTBEAT_TTL_S * 1000))

    async def _beat_loop(self) -> None:
        await forever(HEARTBEAT_S, self._beat)

    async def _publish_loads(self) -> None:
        loads: dict[str, tuple[int, int]] = {}
        for node, link in self.hub.links.items():
            now = (link.inflight, link.finished)
            if self._loads.get(node) != link.inflight:
                self._loads[node] = link.inflight
                loads[node] = now
        if loads:
            await self.broker.publish(
                "presence", json.dumps({"op": "load", "router": self.me, "loads": loads})
            )

    async def _load_loop(self) -> None:
        await forever(LOAD_S, self._publish_loads)

    async def _resync(self) -> None:
        """Re-read the whole presence: add nodes missed, drop those whose router's heartbeat has expired."""
        entries = await self.r.hgetall(self.broker.key("nodes"))
        parsed = {text(k): json.loads(v) for k, v in entries.items()}
        routers = sorted({e["router"] for e in parsed.values()})
        beats = await self.r.mget([self.broker.key("router", r) for r in routers]) if routers else []
        alive = dict(zip(routers, beats, strict=True))
        dead = {r for r, beat in alive.items() if beat is None and r != self.me}
        for node, e in parsed.items():
            if e["router"] in dead:
                continue
            self._remote(node, e)
        for node, link in list(self.hub.remote.items()):
            e = parsed.get(node)
            if e is None or e["router"] != link.holder or e["router"] in dead:
                self.hub.drop_remote(node)
        if dead:  # the dead routers' entries: gone for everyone, and their relayed reservations here too
            stale = [n for n, e in parsed.items() if e["router"] in dead]
            if stale:
                await self.r.hdel(self.broker.key("nodes"), *stale)
            self.relay.owners_gone(dead)
        # our links' entries: claimed again (a broker restart loses them), or given up to a live holder
        for node, own in list(self.hub.links.items()):
            e = parsed.get(node)
            if e is None or e["router"] != self.me or e["nonce"] != own.nonce:
                await self._settle(own)
        # our entries for connections no longer here (a failed delete): removed when seen on two resyncs in a row
        # (one resync may fall between a hello's claim and its link joining the hub)
        orphans = {
            (n, str(e["nonce"]))
            for n, e in parsed.items()
            if e["router"] == self.me and (n not in self.hub.links or self.hub.links[n].nonce != e["nonce"])
        }
        for node, nonce in orphans & self._orphans:
            await self.presence.forget(node, nonce)
        self._orphans = orphans - self._orphans

    async def _resync_loop(self) -> None:
        await asyncio.sleep(RESYNC_S)
        await forever(RESYNC_S, self._resync)

    # ------------------------------------------------------------------ task ownership

    async def _lease_loop(self) -> None:
        async def step() -> None:
            await self.leases.step()
            self.relay.purge()

        await forever(LEASE_RENEW_S, step)

    @property
    def taken_over(self) -> int:
        """Tasks this router took over from a dead one."""
        return self.leases.taken_over

    def release(self, link: RelayLink) -> None:
        """The hub's release of another router's node: that router frees its slot too."""
        self.relay.release(link)


def _hardware(raw: Any) -> wire.Hardware:
    """A presence entry's hardware (written by another router from its node's hello); the defaults if absent or
    not valid (an entry from an older router)."""
    try:
        return wire.Hardware.model_validate(raw) if raw else wire.Hardware()
    except ValueError:
        return wire.Hardware()


async def forever(every: float, step: Callable[[], Any]) -> None:
    """Run ``step`` every ``every`` seconds until cancelled; a failing step (the broker away) is logged, and the
    next one runs on time."""
    while True:
        try:
            await step()
        except (RedisError, OSError) as exc:
            log.warning("cluster step failed step=%s error=%s", step.__name__, str(exc)[:200])
        except Exception:
            log.exception("cluster step crashed step=%s", step.__name__)
        await asyncio.sleep(every)
