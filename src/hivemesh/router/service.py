"""The router's service layer: takes a task spec, persists it, queues it, runs it; owns the background tasks.

HTTP handlers call ``submit``; nothing here knows about HTTP. On start, tasks a previous process left
unfinished are re-dispatched (their spec is on the task row), so nothing a user submitted is lost to a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from redis.exceptions import RedisError
from sqlalchemy import insert, select, update

from hivemesh.cluster.broker import Broker
from hivemesh.config import RouterConfig
from hivemesh.errors import HivemeshError, NoMinerAvailable
from hivemesh.identity import Identity
from hivemesh.protocol.wire import ChatMessage, SamplingParams
from hivemesh.router.billing import CHEATS, Billing
from hivemesh.router.cluster import Cluster
from hivemesh.router.domain import TaskSpec
from hivemesh.router.hub import MinerHub
from hivemesh.router.limits import Limiter, LocalLimiter, SharedLimiter
from hivemesh.router.reputation import STANDALONE_REFRESH_S, Reputation
from hivemesh.router.runner import StreamEnd, TaskRun
from hivemesh.router.scheduler import Scheduler, Ticket
from hivemesh.router.session_queues import SessionQueues, renew_forever
from hivemesh.router.sessions import Sessions
from hivemesh.router.token_run import Run, TokenRun
from hivemesh.store import schema as s
from hivemesh.store.db import Row, Store

log = logging.getLogger(__name__)

SESSION_CHANNEL = "sessions"  # the broker channel a router announces a changed session id on

RECOVERY_WAIT_S = 300.0  # how long a recovered task waits for a miner serving its model to (re)join
ORPHAN_MARGIN_S = 5.0  # beyond the queue timeout: a hold older than both with no task row is an orphan


class RouterService:
    def __init__(
        self,
        config: RouterConfig,
        store: Store,
        identity: Identity,
        embedder: Any = None,
        ledger: Any = None,
        broker: Broker | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.identity = identity
        self.embedder = embedder
        self.hub = MinerHub(identity, store)
        self.ledger = ledger  # hivemesh.ledger.Ledger, or None: nothing is billed
        self.billing = Billing(ledger, config.billing) if ledger is not None else None
        self.broker = broker  # the cluster's broker (config.cluster_url), or None: a router on its own
        self.limiter: Limiter = LocalLimiter() if broker is None else SharedLimiter(broker)
        if self.billing is not None:
            self.hub.on_strike = self._on_strike
            self.hub.admit = self._admit
        # a router on its own is its reputation rows' only writer: it reads them back only as a safety net
        self.reputation = (
            Reputation(store) if broker is not None else Reputation(store, refresh_s=STANDALONE_REFRESH_S)
        )
        self.hub.reputation = self.reputation
        self.reputation.on_refresh = self.hub.rescore  # other routers' work moves the node pool's indexes too
        self.scheduler = Scheduler(self.hub, queue_timeout_s=config.queue_timeout_s)
        self.sessions = Sessions(store, config.defaults)
        if broker is not None:  # a change is announced to every router at once; the TTL is a safety net
            self.sessions.ttl_s = 30.0
            self.sessions.on_change = self._announce_session
        self._bg: set[asyncio.Task[Any]] = set()
        self._drives: dict[
            str, tuple[Run, asyncio.Task[Any]]
        ] = {}  # task id -> its run and the task driving it
        self._cancelled: dict[str, str] = {}  # task id -> why its caller cancelled it
        self._recovering: set[str] = (
            set()
        )  # tasks re-dispatched from their rows, until they end or are given up
        self.started_at = time.time()
        # called with each TaskRun once it has ended (run.final set) or failed: metrics, dashboards, billing
        self.observers: list[Callable[[Run], None]] = []
        if self.billing is not None:
            self.observers.append(self._settle)
        # one network over N routers: presence, relaying and task leases on the broker (router/cluster.py)
        self.cluster: Cluster | None = None
        self.session_queues: SessionQueues | None = None  # in a cluster: one owner per session queue
        if broker is not None:
            self.cluster = Cluster(
                broker,
                self.hub,
                store,
                me=identity.address,
                running=self._running,
                recover=self._recover_one,
            )
            self.hub.on_release_remote = self.cluster.release
            self.session_queues = SessionQueues(
                broker,
                self.cluster.relay,
                self.scheduler,
                me=identity.address,
                spawn=lambda c: self._spawn(c, "sq"),
            )
            self.scheduler.gate = self.session_queues

    async def start(self) -> None:
        if self.broker is not None:
            sessions = self.sessions
            self.broker.subscribe(SESSION_CHANNEL, lambda data: sessions.forget(data.decode()))
            # after a broken subscription messages may have been lost: every cached session is read again
            self.broker.on_gap.append(sessions.forget)
        await self.reputation.load()
        await self._load_known_models()
        self.scheduler.start()
        if self.cluster is not None:
            await self.cluster.start()
        if self.session_queues is not None:
            self._spawn(renew_forever(self.session_queues), "session-queues")
        self._spawn(self._recover(), "recover")

    def _running(self) -> set[str]:
        """Tasks this router owns now: running, queued for miners, or being recovered (their leases renewed)."""
        ids = set(self._drives) | self._recovering
        for q in self.scheduler.queues.values():
            # a place held here for another router is that router's
            ids.update(t.spec.id for t in q if t.origin is None)
        if self.session_queues is not None:
            ids.update(self.session_queues.waiting)  # ours, waiting in another router's queue
        return ids

    def queue_depth(self, session_id: str) -> int:
        """A session's waiting tasks as this router knows them: all of them where its queue is (here on its own,
        or on the owner in a cluster); elsewhere, those that came through this router."""
        depth = self.scheduler.depth_of(session_id)
        if self.session_queues is not None:
            depth += sum(
                1 for w in self.session_queues.waiting.values() if w.ticket.spec.session.id == session_id
            )
        return depth

    async def _announce_session(self, session_id: str) -> None:
        """Tell the other routers of the cluster that a session changed (they drop their cached copy)."""
        assert self.broker is not None
        try:
            await self.broker.publish(SESSION_CHANNEL, session_id)
        except (RedisError, OSError) as exc:  # the others read it again within their TTL
            log.warning("session change not announced session=%s error=%s", session_id, str(exc)[:200])

    async def _load_known_models(self) -> None:
        """Every model a miner has announced here, from the nodes' records: after a restart, a request for one
        whose miners have not reconnected yet is a 503 with retry-after (they are coming back), not a 404."""
        for row in await self.store.fetch_all(select(s.nodes.c.models)):
            for card in row["models"] or []:
                if isinstance(card, dict) and isinstance(card.get("id"), str):
                    self.hub.known_models.add(card["id"])

    async def close(self) -> None:
        self.hub.shutting_down = True
        await self.scheduler.close()
        if self.cluster is not None:
            await self.cluster.close()
        for t in list(self._bg):
            t.cancel()
        for t in list(self._bg):
            with contextlib.suppress(BaseException):
                await t
        await self.hub.close()
        await self.reputation.close()
        if self.billing is not None:
            await self.billing.drain()
        if self.broker is not None:
            await self.broker.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro, name=name)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        return t

    async def _embed(self, texts: list[str]) -> np.ndarray:
        vecs: np.ndarray = await self.embedder.aembed(texts)
        return vecs

    # ------------------------------------------------------------------ submitting

    async def submit(
        self,
        spec: TaskSpec,
        *,
        stream: bool,
        persist: bool = True,
        default_session: bool = False,
        durable: bool = False,
    ) -> Run:
        """Reserve the task's worst-case cost, persist, queue and start it. Returns the run once it has miners
        (its ``answer`` future resolves with the outcome; with ``stream`` its ``stream`` queue yields text, then
        a StreamEnd). Raises PaymentRequired (402) or NoMinerAvailable (503) when it cannot start."""
        if self.billing is not None and persist:
            await self.billing.reserve(spec, default_session=default_session)
        row = _task_row(spec) if persist else None
        if row is not None and durable:
            # the caller answers before the task ends (an async submission): the task row is all it has
            await self.store.write(insert(s.tasks).values(**row))
            row = None
        queue: asyncio.Queue[str | StreamEnd] | None = asyncio.Queue() if stream else None
        cost_of = self._cost_of if self.billing is not None else None
        run: Run
        if spec.session.mode == "token" and not spec.network and spec.target is None:
            run = TokenRun(
                spec,
                hub=self.hub,
                store=self.store,
                identity=self.identity,
                reputation=self.reputation,
                cost_of=cost_of,
                stream=queue,
            )
        else:
            run = TaskRun(
                spec,
                hub=self.hub,
                store=self.store,
                identity=self.identity,
                embed=self._embed if self.embedder is not None else None,
                reputation=self.reputation,
                cost_of=cost_of,
                stream=queue,
            )
        run.record.recovered = not persist  # the recovery path: the task row and maybe slot records exist
        run.record.pending_row = row  # written with the task's first checkpoint (at most ROW_DELAY_S late)

        async def drive() -> None:
            try:
                await run.run()  # its finally sends Cancel to every miner still working on the task
            except asyncio.CancelledError:
                if (why := self._cancelled.pop(spec.id, None)) is not None:
                    await self._abandon(run, why)
                raise
            finally:
                for observe in self.observers:
                    try:
                        observe(run)
                    except Exception:
                        log.exception("task observer failed task_id=%s", spec.id)

        def start() -> None:
            run.begin()
            task = self._spawn(drive(), f"task-{spec.id}")
            self._drives[spec.id] = (run, task)
            task.add_done_callback(lambda _: self._drives.pop(spec.id, None))

        try:
            await self.scheduler.enqueue(Ticket(spec, start))
        except HivemeshError as exc:
            if not persist:
                raise  # a recovered task: _recover_one tries again, and releases its hold only when it gives up
            if self.billing is not None:
                self.billing.settle_later(spec, None, 0)  # release the hold
            failed = {
                "phase": "failed",
                "error": exc.message,
                "updated_at": time.time(),
                "finished_at": time.time(),
            }
            if row is not None:
                await self.store.write(insert(s.tasks).values(**{**row, **failed}))
            else:
                await self.store.write(update(s.tasks).where(s.tasks.c.id == spec.id).values(**failed))
            raise
        return run

    def cancel(self, task_id: str, reason: str) -> bool:
        """Stop a task its caller no longer wants (a client that disconnected): its miners are told to cancel,
        its record ends ``failed`` with ``reason``, its hold is released and nothing is billed. False when the
        task is not running here or has already answered (an answer given is an answer billed)."""
        if (drive := self._drives.get(task_id)) is None:
            return False
        run, task = drive
        if task.done() or run.answer.done():
            return False
        self._cancelled[task_id] = reason
        task.cancel(reason)
        log.info("task cancelled task_id=%s reason=%s", task_id, reason)
        return True

    async def _abandon(self, run: Run, why: str) -> None:
        """The end of a cancelled run: recorded as failed, no miner scored, the caller's futures resolved."""
        exc = HivemeshError(why, code="cancelled")
        run.error = exc
        now = time.time()
        run.record.event("failed", None, reason=why)
        run.record.task(phase="failed", error=why, finished_at=now, updated_at=now)
        try:
            await run.record.persist()
        finally:
            if not run.answer.done():
                run.answer.set_exception(exc)
                run.answer.exception()  # the caller is gone: nobody else will retrieve it
                if run.stream is not None:
                    run.stream.put_nowait(StreamEnd(error=exc))

    # ------------------------------------------------------------------ billing hooks

    def _cost_of(self, run: Run, outcome: Any) -> int:
        assert self.billing is not None
        return self.billing.charge(run.spec, outcome, run.k)

    def _settle(self, run: Run) -> None:
        assert self.billing is not None
        self.billing.settle_later(run.spec, run.final if run.error is None else None, run.k)

    def _on_strike(self, node: str, kind: str, task_id: str | None) -> None:
        assert self.billing is not None
        if kind in CHEATS:
            self._spawn(self._slash(node, kind, task_id), f"slash-{node}")

    async def _slash(self, node: str, kind: str, task_id: str | None) -> None:
        """Slash a proven cheat, then check its stake again: below its pool's minimum, it loses paid work now."""
        assert self.billing is not None
        await self.billing.slash(node, kind, task_id)
        await self.hub.recheck_stake(node)

    async def _admit(self, node: str, pool: int) -> str | None:
        """Why a miner may not join (its stake is below its pool's minimum), or None."""
        try:
            await self.ledger.check_stake(node, pool)
        except HivemeshError as exc:
            return exc.message
        return None

    # ------------------------------------------------------------------ recovery

    async def _recover(self) -> None:
        """Finish what a previous process left: re-dispatch unfinished tasks, close answered ones with the
        answer on record, then settle or release every hold that no running task will settle."""
        # in a cluster, unfinished tasks belong to their owners until their leases lapse: the cluster's sweep takes
        # those (this router's own included, under its own name), never another live router's
        rows = [] if self.cluster is not None else await self.store.unfinished_tasks()
        if rows:
            log.info("recovering unfinished tasks count=%d", len(rows))
        for row in rows:
            self._spawn(self._recover_one(row), f"recover-{row['id']}")
        # answered but not yet ended when the router stopped: close them (their holds are settled below)
        answered = select(s.tasks.c.id).where(s.tasks.c.phase == "validated")
        for row in [] if self.cluster is not None else await self.store.fetch_all(answered):
            await self.store.write(
                update(s.tasks)
                .where(s.tasks.c.id == row["id"])
                .values(phase="ended", finished_at=time.time())
            )
        if self.billing is not None:
            await self._settle_stranded({row["id"] for row in rows})
            # from here on the router anchors the ledger: signed chain heads, at an interval and on shutdown
            self.billing.start_checkpoints(self.identity, self.ledger.checkpoint_file(self.config.data_dir))

    async def _settle_stranded(self, running: set[str]) -> None:
        """Holds a previous process left locked: a task that ended (its settlement ran in the background and
        was lost with the process) is settled from its recorded answer, a failed one released, and a hold
        without a task row (killed between the reserve and the row) released once it is older than any task
        could wait for its row. Holds of re-dispatched tasks are settled when they end; holds younger than
        this process belong to live requests. Settlement is idempotent, so running this twice pays nothing
        twice."""
        assert self.billing is not None
        stale = [h for h in await self.ledger.held() if h.created_at.timestamp() < self.started_at]
        stale = [h for h in stale if h.task_id not in running]
        if not stale:
            return
        ids = [h.task_id for h in stale]
        found = {
            r["id"]: r
            for r in await self.store.fetch_all(
                select(s.tasks.c.id, s.tasks.c.phase, s.tasks.c.result, s.tasks.c.session_id).where(
                    s.tasks.c.id.in_(ids)
                )
            )
        }
        settled = released = orphans = 0
        for hold in stale:
            row = found.get(hold.task_id)
            if row is None:
                orphans += 1
                self._spawn(self._release_orphan(hold.task_id, hold.created_at.timestamp()), "orphan-hold")
                continue
            if row["phase"] in ("ended", "validated") and row["result"]:
                session = await self.sessions.get(row["session_id"])
                await self.billing.settle_recorded(row["id"], session.owner, row["result"])
                settled += 1
            elif row["phase"] in ("ended", "validated", "failed"):
                with contextlib.suppress(HivemeshError):
                    await self.ledger.release(row["id"], reason="task failed before a restart")
                released += 1
        log.info("stranded holds closed settled=%d released=%d orphans=%d", settled, released, orphans)

    async def _release_orphan(self, task_id: str, created_at: float) -> None:
        """Release a hold that has no task row, once no live task could still be about to write that row."""
        wait = created_at + self.config.queue_timeout_s + ORPHAN_MARGIN_S - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if await self.store.get_task(task_id) is None:
            with contextlib.suppress(HivemeshError):
                await self.ledger.release(task_id, reason="orphan hold: the task was never recorded")
            log.info("orphan hold released task_id=%s", task_id)

    async def _close_answered(self, row: Row) -> None:
        """A task its router answered (phase ``validated``) but did not end before it died: ended from its
        recorded answer, and its hold settled from it (idempotent: nothing is paid twice)."""
        now = time.time()
        await self.store.write(
            update(s.tasks)
            .where(s.tasks.c.id == row["id"], s.tasks.c.phase == "validated")
            .values(phase="ended", finished_at=now, updated_at=now)
        )
        if self.billing is not None and row["result"]:
            with contextlib.suppress(HivemeshError):
                session = await self.sessions.get(row["session_id"])
                await self.billing.settle_recorded(row["id"], session.owner, row["result"])

    async def _recover_one(self, row: Row) -> None:
        if row["phase"] == "validated":
            await self._close_answered(row)
            return
        self._recovering.add(row["id"])
        try:
            await self._recover_task(row)
        finally:
            self._recovering.discard(row["id"])

    async def _recover_task(self, row: Row) -> None:
        try:
            session = await self.sessions.get(row["session_id"])
            spec = task_from_row(row, session)
        except HivemeshError as exc:
            await self._give_up(row["id"], exc.message)
            return
        self.store.submit(
            insert(s.task_events).values(task_id=spec.id, ts=time.time(), phase="recovered", detail={})
        )
        deadline = time.monotonic() + RECOVERY_WAIT_S
        while True:
            try:
                run = await self.submit(spec, stream=False, persist=False)
            except NoMinerAvailable as exc:
                if time.monotonic() > deadline:
                    await self._give_up(spec.id, exc.message)
                    return
                await asyncio.sleep(1.0)
                continue
            except HivemeshError as exc:
                await self._give_up(spec.id, exc.message)
                return
            with contextlib.suppress(HivemeshError):
                await run.answer  # it settles (or releases) its hold when it ends, like any task
            return

    async def _give_up(self, task_id: str, why: str) -> None:
        """A recovered task that will not run: mark it failed, then release its hold (never both run and
        release)."""
        now = time.time()
        await self.store.write(
            update(s.tasks)
            .where(s.tasks.c.id == task_id)
            .values(phase="failed", error=why, updated_at=now, finished_at=now)
        )
        if self.billing is not None:
            with contextlib.suppress(HivemeshError):
                await self.ledger.release(task_id, reason="task failed after a restart")


def new_task_id() -> str:
    return "task_" + uuid.uuid4().hex


def _task_row(spec: TaskSpec) -> Row:
    now = time.time()
    return {
        "id": spec.id,
        "session_id": spec.session.id,
        "model": spec.model,
        "kind": spec.kind,
        "request": {
            "messages": [m.model_dump() for m in spec.messages],
            "prompt": spec.prompt,
            "params": spec.params.model_dump(mode="json"),
            "stream": spec.stream,
        },
        "phase": "queued",
        "seed": spec.shuffle_seed,
        "candidates": [],
        "created_at": spec.created_at or now,
        "updated_at": now,
    }


def task_from_row(row: Row, session: Any) -> TaskSpec:
    req = row["request"]
    return TaskSpec(
        id=row["id"],
        session=session,
        model=row["model"],
        kind=row["kind"],
        params=SamplingParams.model_validate(
            {**req["params"], "stop": tuple(req["params"].get("stop", ()))}, strict=False
        ),
        messages=tuple(ChatMessage.model_validate(m) for m in req.get("messages", [])),
        prompt=req.get("prompt", ""),
        stream=bool(req.get("stream")),
        created_at=row["created_at"],
        shuffle_seed=row["seed"],
    )
