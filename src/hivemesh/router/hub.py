"""The miner WebSocket hub: who is connected, what they serve, how busy they are, and where their messages go.

A miner dials in; the hub sends a Challenge, checks the signed Hello (the node id is the address that signed
it), then routes every later frame to the task run it belongs to. Malformed frames, bad signatures and messages
for tasks a node was not given are recorded against the node and dropped; a node that keeps doing it is cut off.
Nothing a miner sends can raise out of the hub.

Defences (what a hostile miner meets here):

* A first frame that is not a valid, signed Hello (binary, not JSON, oversized, another message) closes the
  connection with code 4401 and one log line; a binary frame later is a ``garbage`` strike.
* Everything a miner sends that the hub records (strike details, task ids in ``node_events``, log fields) is cut
  to ``MAX_RECORDED`` characters, whatever the wire models allow.
* ``MAX_STRIKES`` protocol violations on one connection close it with 4400. A connection that sends frames faster
  than ``FRAME_RATE`` per second (plus ``FRAME_RATE_PER_TASK`` for each task in flight on it, far above any
  engine's token rate) beyond a burst of ``FRAME_BURST`` is struck once (``flood``) and closed with 4429. The hub
  handles one frame at a time, so a fast sender never queues work in the router.

One connection per node: on a router of a cluster, a hello from a node another live router holds is refused with
``wire.CLOSE_HELD_ELSEWHERE`` before the node is registered anywhere (``claim``, set by the cluster: see
``router.presence``); the node is served here through that router. On one router, a new connection of a node
replaces its old one (``attach``).

Stake pools: a node claims a pool in its Hello and is refused at join (4402) unless its stake meets that pool's
minimum. Pool 0 needs no stake, so it may serve only network tasks (a validator's checks) and user work that nobody
pays for (the router's own static keys, an open router); billed user work (``serving(..., billed=True)``) goes only
to nodes that joined at pool 1 or above. A node slashed below its pool's minimum is demoted to pool 0 on this
connection by ``recheck_stake`` and refused at that pool on its next join: rejoining at pool 0 does not bring paid
work back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from hivemesh.errors import BadSignature
from hivemesh.identity import Identity, verify
from hivemesh.protocol import wire
from hivemesh.router.links import Link, RelayLink, signed
from hivemesh.router.pool import Eligibility, NodePool, PoolClass, Role
from hivemesh.router.presence import refusal
from hivemesh.store.db import Store

log = logging.getLogger(__name__)
MAX_KNOWN_MODELS = 1024  # model names remembered across miners (for 503 instead of 404 while none is back)

MAX_STRIKES = 20  # protocol violations on one connection before the hub hangs up
HELLO_TIMEOUT_S = 10.0
MAX_RECORDED = 256  # characters of anything a miner sent that the hub logs or stores (ids, details)
FRAME_RATE = 1_000.0  # frames/s a connection may send with nothing in flight (pongs, a released tail)
FRAME_RATE_PER_TASK = (
    1_000.0  # more frames/s per task in flight (a Delta per token: no engine streams this fast)
)
FRAME_BURST = 5_000.0  # frames a connection may send at once above its rate


class TaskSink(Protocol):
    """A task run, as the hub sees it."""

    def on_message(self, node: str, msg: wire.FromMiner) -> None: ...

    def on_disconnect(self, node: str) -> None: ...


MinerLink = Link  # a connected node, whatever carries it (``router.links``): the name the router uses


@dataclass(eq=False, kw_only=True)
class SocketLink(Link):
    """A node's WebSocket to this router."""

    ws: WebSocket
    signer: Identity  # this router: it signs what it assigns over the connection's nonce
    allowance: float = FRAME_BURST  # frames it may still send now (a token bucket refilled at its rate)
    refilled_at: float = field(default_factory=time.monotonic)

    def spend_frame(self) -> bool:
        """Take one frame from the connection's allowance; False once it sends faster than its rate allows."""
        now = time.monotonic()
        rate = FRAME_RATE + FRAME_RATE_PER_TASK * max(self.inflight, 0)
        self.allowance = min(FRAME_BURST, self.allowance + (now - self.refilled_at) * rate) - 1
        self.refilled_at = now
        return self.allowance >= 0

    async def transmit(self, msg: wire._Msg) -> bool:
        try:
            await self.ws.send_text(wire.encode(signed(msg, self.signer, self.nonce)))
            return True
        except Exception:  # a dead socket is a disconnect, noticed by the receive loop
            return False


class RelaySink(Protocol):
    """A task another router owns that runs on nodes connected here (``router.cluster``)."""

    def on_message(self, node: str, msg: wire.FromMiner) -> None: ...

    def on_disconnect(self, node: str) -> None: ...


class MinerHub:
    def __init__(self, identity: Identity, store: Store) -> None:
        self.identity = identity
        self.store = store
        self.links: dict[str, MinerLink] = {}  # nodes whose connection this router holds
        self.remote: dict[str, RelayLink] = {}  # nodes other routers of the cluster hold (router.cluster)
        self.runs: dict[str, TaskSink] = {}
        self.relayed: dict[str, RelaySink] = {}  # tasks other routers own, running on nodes connected here
        self.listeners: list[Callable[[], None]] = []  # woken when capacity may have freed up
        self.finished_counts: dict[str, int] = {}
        self.reputation: Any = None  # router.reputation.Reputation, set by the service
        self.on_strike: Callable[[str, str, str | None], None] | None = None  # (node, kind, task_id): billing
        self.admit: Callable[[str, int], Awaitable[str | None]] | None = (
            None  # (node, pool) -> why not, or None
        )
        self.on_presence: Callable[[MinerLink, bool], None] | None = None  # (link, joined): the cluster
        self.on_release_remote: Callable[[RelayLink], None] | None = None  # the cluster's relay
        # (link) -> the live router that holds the node instead (refused), or None: the cluster's presence
        self.claim: Callable[[MinerLink], Awaitable[str | None]] | None = None
        self.known_models: set[str] = set()  # every model a miner has ever served here
        self.shutting_down = (
            False  # set when the router stops: tasks in flight are left to resume, not failed
        )
        self.pings: dict[
            str, tuple[str, asyncio.Future[None]]
        ] = {}  # ping nonce -> (node, resolved by its Pong)
        self.validation_until = (
            0.0  # while a validator holds a live lease (unix time): user work needs validated nodes
        )
        self.pool = NodePool(
            self.members,
            judge=lambda: self.reputation,
            stake_checked=lambda: self.admit is not None,
        )

    # ------------------------------------------------------------------ queries used by the scheduler

    def members(self) -> list[MinerLink]:
        """Every node the pool may use: those connected here, and those connected to other routers, each once.
        A node has one connection in the cluster (``router.presence``); while two routers briefly hold one (the
        tie-break has not run yet), its link here is the one used."""
        out: list[MinerLink] = list(self.links.values())
        out += [ln for node, ln in self.remote.items() if node not in self.links]
        return out

    def models(self) -> dict[str, wire.ModelCard]:
        """Every model some node in the network serves now, with a card for it (O(models), not O(nodes))."""
        return dict(self.pool.cards)

    def score(self, node: str) -> float:
        """The node's total reputation score in [0, 1] (0.5, neutral, without a reputation service)."""
        return self.reputation.total(node) if self.reputation is not None else 0.5

    def serving(
        self, model: str, sla: str | None = None, *, network: bool = False, billed: bool = False
    ) -> list[MinerLink]:
        """Nodes serving ``model``, scanned (views and tests; tasks draw from ``eligible``); with ``sla``, only
        those eligible for user work at that tier. Network tasks (``network=True``) may reach quarantined nodes.
        Billed user work (``billed=True``, ignored for network tasks) goes only to nodes staked for a pool above 0,
        wherever the router checks stake at join (``admit`` set)."""
        key = self.eligibility(model, sla, network=network, billed=billed)
        return [ln for ln in self.members() if self.pool.eligible(ln, key)]

    def eligibility(
        self,
        model: str,
        sla: str | None = None,
        *,
        network: bool = False,
        billed: bool = False,
        role: Role = "any",
    ) -> Eligibility:
        """The node pool class of a task (an index key)."""
        scored = sla is not None and self.reputation is not None
        return Eligibility(
            model=model,
            sla=sla if scored else None,
            network=network,
            billed=billed and not network and self.admit is not None,
            gated=scored and not network and time.time() < self.validation_until,
            role=role,
        )

    def eligible(self, key: Eligibility) -> PoolClass:
        """The nodes of ``key``'s class (``members``) and the free ones ready to draw from (``index``)."""
        return self.pool.get(key)

    def link(self, node: str) -> MinerLink | None:
        """The node's link: its connection here, else another router's (None when it is nowhere)."""
        link = self.links.get(node) or self.remote.get(node)
        return None if link is None or link.closed else link

    def rescore(self, nodes: Iterable[str]) -> None:
        """Reputation changed for ``nodes`` (a task ended): move them in the node pool's indexes."""
        for node in nodes:
            if (link := self.link(node)) is not None:
                self.pool.update(link)

    def resync(self) -> None:
        """Re-judge every node (rolling score windows, a validator's verdicts): the scheduler calls it now and
        then."""
        self.pool.resync(self.members())

    def reserve(self, node: str) -> MinerLink | None:
        link = self.link(node)
        if link is None or link.free < 1:
            return None
        link.inflight += 1
        return link

    def release(self, link: MinerLink) -> None:
        link.inflight = max(0, link.inflight - 1)
        if isinstance(link, RelayLink) and self.on_release_remote is not None:
            self.on_release_remote(link)  # the router holding the node frees its slot too
        self._notify()

    def _notify(self) -> None:
        for cb in list(self.listeners):
            cb()

    # ------------------------------------------------------------------ the cluster's view of other routers' nodes

    def add_remote(self, link: RelayLink) -> None:
        """A node another router holds (its presence): schedulable here through the relay."""
        old = self.remote.get(link.node)
        if old is not None:
            self.drop_remote(old.node)
        self.remote[link.node] = link
        if link.node not in self.links:
            link.on_change = self.pool.update
            self.pool.joined(link)
        self._notify()

    def drop_remote(self, node: str, *, gone: bool = True) -> None:
        """A node another router held is gone from it; tasks here that used it through the relay hear so."""
        link = self.remote.pop(node, None)
        if link is None:
            return
        shadowed = node in self.links
        link.on_change = None
        link.closed = True
        if not shadowed:
            self.pool.left(link)
            if gone and not self.shutting_down:
                for run in list(self.runs.values()):
                    run.on_disconnect(node)

    # ------------------------------------------------------------------ connection lifecycle

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        nonce = secrets.token_hex(16)
        try:
            await ws.send_text(wire.encode(wire.Challenge(nonce=nonce, router=self.identity.address)))
            raw = await asyncio.wait_for(_receive(ws), HELLO_TIMEOUT_S)
            if isinstance(raw, bytes):
                raise ValueError("binary frame (the protocol is JSON text)")
            hello = wire.decode_from_miner(raw)
            if not isinstance(hello, wire.Hello):
                raise BadSignature("first frame must be hello")
            if hello.nonce != nonce:
                raise BadSignature("hello answers another challenge (replayed?)")
            verify(wire.signing_payload(hello, nonce), hello.sig, hello.node)
        except (ValidationError, ValueError, BadSignature, TimeoutError) as exc:
            log.warning("miner rejected at hello reason=%s", _short(exc))
            await _close(ws, 4401, f"hello rejected: {_short(exc)}")
            return
        except WebSocketDisconnect as exc:
            log.info("miner left before hello code=%s", exc.code)
            return
        except RuntimeError:
            return
        node = hello.node
        if self.admit is not None and (why := await self.admit(node, hello.pool)) is not None:
            log.warning("miner refused node=%s pool=%d reason=%s", node, hello.pool, why)
            await _close(ws, 4402, f"refused: {why}")
            return
        link = SocketLink(
            node=node,
            nonce=nonce,
            ws=ws,
            signer=self.identity,
            models=frozenset(c.id for c in hello.models),
            cards=hello.models,
            capacity=hello.capacity,
            pool=hello.pool,
            hardware=hello.hardware,
            version=hello.version,
            finished=self.finished_counts.get(node, 0),
        )
        if self.claim is not None and (holder := await self.claim(link)) is not None:
            log.info("miner refused node=%s reason=held elsewhere holder=%s", node, holder)
            await _close(ws, wire.CLOSE_HELD_ELSEWHERE, refusal(node, holder))
            return
        await self.attach(link, welcome=wire.Welcome(node=node))
        try:
            await self._receive_loop(link)
        finally:
            await self._drop(link, "disconnected")

    async def attach(self, link: MinerLink, welcome: wire.Welcome | None = None) -> None:
        """Take a node whose hello checked out (a new connection of a node replaces its old one): record it,
        send it ``welcome``, then put it in the node pool and tell the cluster.

        The welcome goes out before the node is schedulable, with no await between making it schedulable and
        the registration: otherwise a task queued under load sends its Assign during the store write, ahead of
        the Welcome the miner waits for, and the miner gives up on the connection (seen after a router restart
        under load: two of three miners failed to join for a minute, every 10 s)."""
        node = link.node
        await self.store.upsert_node(
            node,
            {
                "models": [c.model_dump() for c in link.cards],
                "capacity": link.capacity,
                "pool": link.pool,
                "hardware": link.hardware.model_dump() | {"gpu": link.hardware.gpu[:MAX_RECORDED]},
                "version": link.version,
            },
        )
        if welcome is not None:
            await link.send(welcome)
        while (old := self.links.get(node)) is not None and old is not link and not old.closed:
            # the same node reconnected: the new connection wins
            await self._drop(old, "replaced by a new connection")
        self.links[node] = link
        if (shadow := self.remote.get(node)) is not None:  # it was another router's: this link wins here
            shadow.on_change = None
            self.pool.left(shadow)
        link.on_change = self.pool.update
        self.pool.joined(link)
        if len(self.known_models) < MAX_KNOWN_MODELS:  # a hostile miner cannot grow it without bound
            self.known_models.update(list(link.models)[: MAX_KNOWN_MODELS - len(self.known_models)])
        if self.on_presence is not None:
            self.on_presence(link, True)
        log.info(
            "miner joined node=%s pool=%d models=%s capacity=%d",
            node,
            link.pool,
            sorted(link.models),
            link.capacity,
        )
        self._notify()

    async def _receive_loop(self, link: SocketLink) -> None:
        while True:
            try:
                raw = await _receive(link.ws)
            except WebSocketDisconnect as exc:
                if exc.code == 1012:  # the server itself is restarting: in-flight tasks resume after it
                    self.shutting_down = True
                return
            except RuntimeError:
                return
            if not link.spend_frame():
                self.strike(link, "flood", None, "frames faster than any engine produces them")
                await _close(link.ws, 4429, "flooding")
                return
            if not self.receive(link, raw):
                await _close(link.ws, 4400, "too many protocol violations")
                return

    def receive(self, link: MinerLink, raw: str | bytes) -> bool:
        """One frame from a node connected here: checked, then routed to the task it names (or struck and
        dropped). False once the node has earned a hang-up."""
        try:
            if isinstance(raw, bytes):
                raise ValueError("binary frame (the protocol is JSON text)")
            msg = wire.decode_from_miner(raw)
        except (ValidationError, ValueError) as exc:
            self.strike(link, "garbage", None, _short(exc))
            return link.strikes < MAX_STRIKES
        self._route(link, msg)
        return link.strikes < MAX_STRIKES

    def _route(self, link: MinerLink, msg: wire.FromMiner) -> None:
        if isinstance(msg, wire.Pong):
            waiter = self.pings.get(msg.nonce)
            if waiter is not None and waiter[0] == link.node and not waiter[1].done():
                waiter[1].set_result(None)
            return
        if isinstance(msg, wire.Hello):
            self.strike(link, "garbage", None, "second hello")
            return
        task_id = msg.task_id
        if isinstance(msg, wire.Ack | wire.Precommit | wire.Commit | wire.Evidence):
            if msg.node != link.node:
                self.strike(link, "bad_signature", task_id, f"message names node {msg.node}")
                return
            try:
                verify(wire.signing_payload(msg, link.nonce), msg.sig, link.node)
            except BadSignature as exc:
                self.strike(link, "bad_signature", task_id, str(exc))
                return
        run = self.runs.get(task_id) or self.relayed.get(task_id)
        if run is None:
            self.strike(link, "unsolicited", task_id, f"{msg.type} for a task not in flight (replay?)")
            return
        run.on_message(link.node, msg)

    def deliver(self, node: str, msg: wire.FromMiner) -> None:
        """A message from a node another router holds, already checked there (the relay): to its task."""
        if isinstance(msg, wire.Pong):
            waiter = self.pings.get(msg.nonce)
            if waiter is not None and waiter[0] == node and not waiter[1].done():
                waiter[1].set_result(None)
            return
        if isinstance(msg, wire.Hello):
            return
        run = self.runs.get(msg.task_id)
        if run is not None:
            run.on_message(node, msg)

    def strike(self, link: MinerLink, kind: str, task_id: str | None, detail: str) -> None:
        link.strikes += 1
        task_id = _bounded(task_id) if task_id is not None else None
        detail = _bounded(detail)
        log.warning("miner strike node=%s kind=%s task_id=%s detail=%s", link.node, kind, task_id, detail)
        self.store.node_event(link.node, kind, task_id, detail)
        if self.on_strike is not None:
            self.on_strike(link.node, kind, task_id)

    async def hand_over(self, link: MinerLink, holder: str) -> None:
        """Another live router holds the node (the cluster's tie-break): close this connection, if it is still the
        node's here, with ``wire.CLOSE_HELD_ELSEWHERE``; its tasks fail over as on any disconnect."""
        if self.links.get(link.node) is link:
            await self._drop(link, refusal(link.node, holder), code=wire.CLOSE_HELD_ELSEWHERE)

    async def _drop(self, link: MinerLink, why: str, *, code: int = 1000) -> None:
        if link.closed:
            return
        link.on_change = None  # the node may have a newer connection: the pool hears of this one only here
        link.closed = True
        current = self.links.get(link.node) is link
        if current:
            del self.links[link.node]
            self.pool.left(link)
            if (shadow := self.remote.get(link.node)) is not None and not shadow.closed:
                shadow.on_change = self.pool.update  # still connected to another router
                self.pool.joined(shadow)
            if self.on_presence is not None:
                self.on_presence(link, False)
        log.info("miner left node=%s reason=%s", link.node, why)
        if not self.shutting_down:
            for run in list(self.runs.values()):
                run.on_disconnect(link.node)
            for relay in list(self.relayed.values()):
                relay.on_disconnect(link.node)
        if isinstance(link, SocketLink):
            await _close(link.ws, code, why)
        self._notify()

    async def recheck_stake(self, node: str) -> bool:
        """Check a connected node's stake against its pool again (after a slash); a node now below its pool's
        minimum is demoted to pool 0 on this connection (no billed work, see ``serving``). True if demoted."""
        link = self.links.get(node)
        if link is None or link.pool == 0 or self.admit is None:
            return False
        why = await self.admit(node, link.pool)
        if why is None:
            return False
        log.warning("miner demoted node=%s pool=%d reason=%s", node, link.pool, why)
        self.store.node_event(node, "demoted", None, _bounded(f"pool {link.pool} -> 0: {why}"))
        link.pool = 0
        return True

    async def disconnect(self, node: str, why: str) -> None:
        """Cut a node's connection (its in-flight work is reassigned); it may dial in again."""
        if (link := self.links.get(node)) is not None:
            await self._drop(link, why)

    async def close(self) -> None:
        self.shutting_down = True
        for link in list(self.links.values()):
            await self._drop(link, "router shutting down")


async def _receive(ws: WebSocket) -> str | bytes:
    """The next frame, text or binary (starlette's ``receive_text`` raises KeyError on a binary frame)."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text = message.get("text")
    if text is not None:
        return str(text)
    return bytes(message.get("bytes") or b"")


def _bounded(text: str) -> str:
    """What a miner sent, cut to ``MAX_RECORDED`` characters for a log line or a stored event."""
    return text if len(text) <= MAX_RECORDED else f"{text[:MAX_RECORDED]}... ({len(text)} chars)"


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # already closed
        await ws.close(code=code, reason=reason[:120])


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
