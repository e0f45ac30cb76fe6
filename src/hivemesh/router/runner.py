"""One task's proof-of-useful-work, driven to its end: assign → ack → precommit → commit → validate → end.

A ``TaskRun`` owns k slots (one miner each). Miners' messages arrive through the hub as events; deadlines are
checked between events. A slot that misses a deadline, disconnects, reveals something other than it precommitted,
or streams text it does not commit to, fails with that reason and is replaced by the next node of the seeded
shuffle, so a task is never dropped while eligible miners exist.

The answer is delivered (``answer`` future, or the stream queue) as soon as a quorum agrees; the run then waits
for the remaining slots so that every miner's dissent or timeout lands on the record.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import bindparam, delete, insert, update

from hivemesh.core.agreement import Decision, Reveal, decide
from hivemesh.core.reputation import Counters
from hivemesh.core.selection import Candidate, rank
from hivemesh.errors import HivemeshError, NoMinerAvailable, UpstreamFailed
from hivemesh.identity import Identity
from hivemesh.protocol import wire
from hivemesh.protocol.wire import NodeId
from hivemesh.router.domain import Outcome, TaskSpec, Verdict
from hivemesh.router.hub import MinerHub, MinerLink
from hivemesh.store import schema as s
from hivemesh.store.db import Store

log = logging.getLogger(__name__)

PENDING = ("assigned", "acked", "precommitted", "revealing")
_INSERT_TASK = insert(s.tasks)
_INSERT_SLOT = insert(s.assignments)
_INSERT_EVENT = insert(s.task_events)
_DELETE_SLOT = delete(s.assignments).where(
    s.assignments.c.task_id == bindparam("k_task"), s.assignments.c.node == bindparam("k_node")
)
_UPDATE_SLOT = update(s.assignments).where(
    s.assignments.c.task_id == bindparam("k_task"), s.assignments.c.node == bindparam("k_node")
)
_UPDATE_TASK = update(s.tasks).where(s.tasks.c.id == bindparam("k_id"))
_SLOT_COLUMNS = tuple(c.name for c in s.assignments.columns)
_SLOT_DEFAULTS: dict[str, Any] = dict.fromkeys(_SLOT_COLUMNS)  # executemany rows must share their keys
ROW_DELAY_S = (
    0.05  # a task still running after this has its row written (faster ones write it once, at the end)
)
FLUSH_S = 0.25  # while miners work, the task's record is brought up to date at most this often
PHASES = (
    "queued",
    "assigned",
    "acked",
    "precommitted",
    "committed",
    "validated",
)  # task phase only moves forward


@dataclass(eq=False)
class Slot:
    node: str
    link: MinerLink
    index: int
    status: str = "assigned"
    assigned_at: float = field(default_factory=time.monotonic)
    deadline: float = 0.0
    digest: str | None = None
    parts: list[str] = field(default_factory=list)
    first_delta_at: float | None = None
    commit: wire.Commit | None = None
    reason: str | None = None
    acked: bool = False
    precommitted: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


class StreamEnd:
    """Put on the stream queue last: the outcome, or the error that ended the stream."""

    def __init__(self, outcome: Outcome | None = None, error: HivemeshError | None = None) -> None:
        self.outcome = outcome
        self.error = error


class TaskRun:
    def __init__(
        self,
        spec: TaskSpec,
        *,
        hub: MinerHub,
        store: Store,
        identity: Identity,
        embed: Any = None,  # async (texts) -> np.ndarray, for semantic mode
        reputation: Any = None,  # router.reputation.Reputation: told how every slot ended
        cost_of: Any = None,  # (run, outcome) -> what the user pays, in the smallest unit
        stream: asyncio.Queue[str | StreamEnd] | None = None,
    ) -> None:
        self.spec = spec
        self.hub = hub
        self.store = store
        self.identity = identity
        self.embed = embed
        self.reputation = reputation
        self.cost_of = cost_of
        self.stream = stream
        sess = spec.session
        self.mode = sess.mode if (sess.mode != "semantic" or embed is not None) else "exact"
        self.events: asyncio.Queue[tuple[str, wire.FromMiner | None]] = asyncio.Queue()
        self.slots: dict[str, Slot] = {}
        self.order: list[str] = []
        self.reveals: list[tuple[Slot, wire.Commit]] = []
        self.vectors: list[np.ndarray] = []
        self.answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.leader: Slot | None = None
        self.sent = ""
        self.k = sess.redundancy
        self.m = sess.quorum
        self.immediate = False
        self.phase = 0
        self._ready: Outcome | None = (
            None  # decided with nobody left running: published with the final record
        )
        self._task_vals: dict[str, Any] = {}  # pending writes, flushed in order at checkpoints
        self._event_rows: list[dict[str, Any]] = []
        self._assign_rows: list[dict[str, Any]] = []
        self._slot_vals: dict[str, dict[str, Any]] = {}
        self._flushed = time.monotonic()
        self.recovered = False  # set by the service for a task re-dispatched after a restart
        self.pending_row: dict[str, Any] | None = None  # the task row, written with the first checkpoint
        self._row_timer: asyncio.TimerHandle | None = None
        self.final: Outcome | None = None  # the outcome as recorded once every miner is classified
        self.error: HivemeshError | None = None  # why the task failed, if it did
        self.started = time.monotonic()

    # ------------------------------------------------------------------ hub callbacks

    def on_message(self, node: str, msg: wire.FromMiner) -> None:
        self.events.put_nowait((node, msg))

    def on_disconnect(self, node: str) -> None:
        if node in self.slots:
            self.events.put_nowait((node, None))

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        """Drive the task to its end. ``begin`` must have been called."""
        if (
            self.pending_row is not None
        ):  # a fast task writes its row with its end, a slow one after ROW_DELAY_S
            self._row_timer = asyncio.get_running_loop().call_later(ROW_DELAY_S, self._flush)
        try:
            await self._start()
            while self._pending():
                timeout = (
                    min(sl.deadline for sl in self.slots.values() if sl.status in PENDING) - time.monotonic()
                )
                try:
                    node, msg = await asyncio.wait_for(self.events.get(), max(0.0, timeout))
                except TimeoutError:
                    await self._expire()
                else:
                    await self._handle(node, msg)
                await self._progress()
                if time.monotonic() - self._flushed > FLUSH_S:
                    self._flush()  # long tasks: the record follows the miners while they work
            await self._finish()
        except HivemeshError as exc:
            await self._fail(exc)
        except Exception as exc:
            log.exception("task run crashed task_id=%s", self.spec.id)
            await self._fail(UpstreamFailed(f"internal error while running the task: {exc}"))
        finally:
            if self._row_timer is not None:
                self._row_timer.cancel()
            for sl in self.slots.values():
                if sl.status in PENDING:
                    await sl.link.send(wire.Cancel(task_id=self.spec.id, reason="task ended"))
                    self._release(sl)
            self.hub.runs.pop(self.spec.id, None)

    def begin(self) -> None:
        """Pick and reserve the first k miners, synchronously: called by the scheduler at admission, so no other
        task can take the same capacity in between. Raises NoMinerAvailable if no miner has room."""
        spec = self.spec
        serving = self.hub.serving(spec.model, spec.session.sla, network=spec.network)
        if spec.target is not None:
            serving = [ln for ln in serving if ln.node == spec.target]
        cands = [
            Candidate(
                node=NodeId(ln.node),
                score=self.hub.score(ln.node),
                free=max(ln.free, 0) or 1,
                capacity=ln.capacity,
                record=ln.finished,
            )
            for ln in serving
        ]
        self.order = list(rank(cands, spec.params.seed))
        self.k = min(self.k, len(self.order)) or 1
        self.immediate = self.k == 1 and self.mode == "none"
        self._task(candidates=list(self.order))
        while len(self.slots) < self.k and self._reserve_next() is not None:
            pass
        if not self.slots:
            raise NoMinerAvailable(f"no miner serving {spec.model!r} has free capacity", retry_after=1)
        self.hub.runs[spec.id] = self

    async def _start(self) -> None:
        for slot in list(self.slots.values()):
            await self._send_assign(slot)

    def _reserve_next(self) -> Slot | None:
        while self.order:
            node = self.order.pop(0)
            link = self.hub.reserve(node)
            if link is None:
                continue
            slot = Slot(node=node, link=link, index=len(self.slots))
            slot.deadline = slot.assigned_at + self.spec.session.ack_timeout_s
            self.slots[node] = slot
            return slot
        return None

    async def _assign_next(self) -> bool:
        while (slot := self._reserve_next()) is not None:
            if await self._send_assign(slot):
                return True
        return False

    async def _send_assign(self, slot: Slot) -> bool:
        sess = self.spec.session
        assign = wire.Assign(
            task_id=self.spec.id,
            model=self.spec.model,
            kind=self.spec.kind,
            messages=self.spec.messages,
            prompt=self.spec.prompt,
            params=self.spec.params,
            stream=self.stream is not None,
            reveal="immediate" if self.immediate else "on_request",
            deadline_ms=int(sess.precommit_timeout_s * 1000),
        )
        assign = assign.model_copy(
            update={"sig": self.identity.sign(wire.signing_payload(assign, slot.link.nonce))}
        )
        self._assign_rows.append(
            {
                "task_id": self.spec.id,
                "node": slot.node,
                "slot": slot.index,
                "status": "assigned",
                "assigned_at": time.time(),
            }
        )
        self._event("assigned", slot.node)
        if await slot.link.send(assign):
            return True
        self._fail_slot(slot, "disconnected")
        return False

    # ------------------------------------------------------------------ events

    async def _handle(self, node: str, msg: wire.FromMiner | None) -> None:
        slot = self.slots.get(node)
        if slot is None:
            return
        if msg is None:
            self._fail_slot(slot, "disconnected")
            return
        if slot.status not in PENDING:
            self.hub.strike(
                slot.link, "replay", self.spec.id, f"{msg.type} after the slot ended ({slot.status})"
            )
            return
        now = time.monotonic()
        sess = self.spec.session
        if isinstance(msg, wire.Ack):
            if slot.status != "assigned":
                self.hub.strike(slot.link, "replay", self.spec.id, "duplicate ack")
                return
            slot.status = "acked"
            slot.acked = True
            slot.deadline = slot.assigned_at + sess.precommit_timeout_s
            self._slot_update(slot, acked_at=time.time())
            self._event("acked", node)
        elif isinstance(msg, wire.Delta):
            if msg.index != len(slot.parts) or slot.status not in ("assigned", "acked"):
                self.hub.strike(slot.link, "garbage", self.spec.id, f"delta {msg.index} out of order")
                self._fail_slot(slot, "garbage")
                return
            if slot.first_delta_at is None:
                slot.first_delta_at = now
            slot.parts.append(msg.text)
            await self._forward(slot)
        elif isinstance(msg, wire.Precommit):
            if self.immediate or slot.status not in ("assigned", "acked"):
                self.hub.strike(slot.link, "replay", self.spec.id, "unexpected precommit")
                return
            slot.status = "precommitted"
            slot.acked = slot.precommitted = True
            slot.digest = msg.digest.lower().removeprefix("0x")
            slot.deadline = slot.assigned_at + sess.precommit_timeout_s + sess.commit_timeout_s
            self._slot_update(slot, status="precommitted", precommit_at=time.time(), digest=slot.digest)
            self._event("precommitted", node, digest=slot.digest)
        elif isinstance(msg, wire.Commit):
            await self._on_commit(slot, msg)
        elif isinstance(msg, wire.TaskFailed):
            self._fail_slot(slot, f"miner_error: {msg.message[:200]}")

    async def _on_commit(self, slot: Slot, msg: wire.Commit) -> None:
        expected = "revealing" if not self.immediate else None
        if expected and slot.status != expected:
            self.hub.strike(slot.link, "replay", self.spec.id, f"commit while {slot.status}")
            return
        if self.immediate and slot.status not in ("assigned", "acked"):
            self.hub.strike(slot.link, "replay", self.spec.id, "duplicate commit")
            return
        if not self.immediate:
            try:
                salt = bytes.fromhex(msg.salt.removeprefix("0x"))
            except ValueError:
                salt = b""
            if hashlib.sha256(salt + msg.output.encode()).hexdigest() != slot.digest:
                self.hub.strike(slot.link, "bad_reveal", self.spec.id, "reveal does not match precommit")
                self._fail_slot(slot, "bad_reveal")
                return
        if slot.parts and slot.text != msg.output:
            self.hub.strike(
                slot.link, "stream_mismatch", self.spec.id, "committed text differs from streamed"
            )
            self._fail_slot(slot, "stream_mismatch")
            return
        slot.status = "committed"
        slot.commit = msg
        self._release(slot)  # the miner is done with this task: its capacity is free again
        ttft = int((slot.first_delta_at - slot.assigned_at) * 1000) if slot.first_delta_at else None
        self._slot_update(
            slot,
            status="committed",
            commit_at=time.time(),
            output=msg.output,
            salt=msg.salt,
            elapsed_ms=msg.elapsed_ms,
            ttft_ms=ttft,
            completion_tokens=msg.usage.completion_tokens,
        )
        self._event("committed", slot.node)
        if self.stream is not None and not slot.parts and msg.output:
            slot.parts.append(msg.output)  # a miner that did not stream can still lead
            await self._forward(slot)
        if self.mode == "semantic" and self.embed is not None:
            self.vectors.append((await self.embed([msg.output]))[0])
        self.reveals.append((slot, msg))

    async def _expire(self) -> None:
        now = time.monotonic()
        for sl in list(self.slots.values()):
            if sl.status in PENDING and sl.deadline <= now:
                phase = {
                    "assigned": "ack",
                    "acked": "precommit",
                    "precommitted": "commit",
                    "revealing": "commit",
                }
                self.hub.strike(sl.link, "timeout", self.spec.id, f"missed the {phase[sl.status]} deadline")
                self._fail_slot(sl, f"timeout_{phase[sl.status]}")

    # ------------------------------------------------------------------ progress: reveals, decisions, swaps

    async def _progress(self) -> None:
        if not self.answer.done():
            # replace failed slots while the answer is open
            live = sum(1 for sl in self.slots.values() if sl.status in PENDING or sl.status == "committed")
            while live < self.k and self.order:
                if not await self._assign_next():
                    break
                self._event("swapped", None, live=live)
                live += 1
        pre = [sl for sl in self.slots.values() if sl.status in ("precommitted", "revealing", "committed")]
        generating = [sl for sl in self.slots.values() if sl.status in ("assigned", "acked")]
        if pre and (len(pre) >= self.m or not generating):
            for sl in pre:
                if sl.status == "precommitted":
                    sl.status = "revealing"
                    sl.deadline = time.monotonic() + self.spec.session.commit_timeout_s
                    self._event("reveal_requested", sl.node)
                    await sl.link.send(wire.RevealRequest(task_id=self.spec.id))
        leader_busy = self.leader is not None and self.leader.status in PENDING
        if (
            not self.answer.done()
            and self._ready is None
            and self.reveals
            and not (self.stream is not None and leader_busy)
        ):
            d = self._decide()
            if d.verdict != "disputed" or not self._pending():
                await self._deliver(d)

    def _decide(self) -> Decision:
        reveals = [Reveal(NodeId(sl.node), c.output) for sl, c in self.reveals]
        if self.mode == "none":
            return decide(reveals[:1], mode="none", quorum=1)
        vectors = np.stack(self.vectors) if self.mode == "semantic" else None
        quorum = min(self.m, len(reveals)) if not self._pending() and len(reveals) < self.m else self.m
        d = decide(
            reveals, mode=self.mode, quorum=quorum, threshold=self.spec.session.threshold, vectors=vectors
        )
        if d.verdict == "verified" and len(d.consensus) < self.m:
            # fewer miners than the quorum could ever answer: an answer, but not a verified one
            d = Decision("unverified", d.answer, d.consensus, d.dissent, d.score, d.similarity, d.groups)
        return d

    async def _deliver(self, d: Decision) -> None:
        slot, commit = self.reveals[d.answer]
        verdict: Verdict = d.verdict
        text, lead = commit.output, slot
        if self.stream is not None:
            if self.leader is None or self.leader.commit is None:
                # the streaming miner is gone: carry on from the answer if it extends what the user has seen
                if not commit.output.startswith(self.sent):
                    raise UpstreamFailed(
                        "the streaming miner failed and the others disagree with what was sent"
                    )
                if len(commit.output) > len(self.sent):
                    self.stream.put_nowait(commit.output[len(self.sent) :])
                    self.sent = commit.output
                self.leader = slot
            lead = self.leader
            text = self.sent
            if lead.node not in d.consensus or lead.commit is None or lead.commit.output != self.sent:
                verdict = "disputed" if d.verdict != "unverified" else "unverified"
        usage = (lead.commit or commit).usage
        outcome = Outcome(
            task_id=self.spec.id,
            session_id=self.spec.session.id,
            text=text,
            finish_reason=(lead.commit or commit).finish_reason,
            usage=usage,
            verdict=verdict,
            mode=self.mode,
            score=d.score,
            similarity=d.similarity,
            miners=tuple(self.slots),
            consensus=tuple(d.consensus),
            dissent=tuple(
                n for n, sl in self.slots.items() if sl.status not in PENDING and n not in d.consensus
            ),
            answered_by=lead.node,
            pending=tuple(n for n, sl in self.slots.items() if sl.status in PENDING),
        )
        if self.cost_of is not None:
            outcome = replace(outcome, cost=self.cost_of(self, outcome))
        self._event("validated", None, verdict=verdict, agreement=d.score)
        if not self._pending():
            self._ready = outcome  # nobody left running: _finish writes the whole record once, then publishes
            return
        self._task(**self._record(outcome, "validated"))
        await self._persist()  # durable before anyone sees it
        self._publish(outcome)

    def _publish(self, outcome: Outcome) -> None:
        self.answer.set_result(outcome)
        if self.stream is not None:
            self.stream.put_nowait(StreamEnd(outcome))

    async def _forward(self, slot: Slot) -> None:
        if self.stream is None or self.answer.done():
            return
        if self.leader is None or self.leader.status not in (*PENDING, "committed"):
            if not slot.text.startswith(self.sent):
                return
            self.leader = slot
        if slot is not self.leader:
            return
        text = slot.text
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.stream.put_nowait(text[len(self.sent) :])
            self.sent = text

    # ------------------------------------------------------------------ ends

    def _pending(self) -> bool:
        return any(sl.status in PENDING for sl in self.slots.values())

    async def _finish(self) -> None:
        if not self.reveals:
            reasons = sorted({sl.reason or "?" for sl in self.slots.values()})
            raise UpstreamFailed(f"no miner completed the task ({', '.join(reasons)})")
        if not self.answer.done() and self._ready is None:
            await self._deliver(self._decide())
        outcome = self._ready or self.answer.result()
        if outcome.pending:  # classify the miners that revealed after the answer went out
            final = self._decide()
            consensus = set(outcome.consensus)
            if outcome.answered_by in final.consensus:
                consensus |= set(final.consensus)
            outcome = replace(
                outcome,
                consensus=tuple(n for n in self.slots if n in consensus),
                dissent=tuple(n for n in self.slots if n not in consensus),
                pending=(),
            )
        for sl, _ in self.reveals:
            agree = sl.node in outcome.consensus
            self._slot_update(sl, in_consensus=agree)
            if not agree:
                self.hub.strike(sl.link, "dissent", self.spec.id, "outvoted")
            sl.link.finished += 1
            self.hub.finished_counts[sl.node] = sl.link.finished
        self.final = outcome
        self._score(set(outcome.consensus), none_mode=self.mode == "none")
        self._event("ended", None, verdict=outcome.verdict)
        self._task(**self._record(outcome, "ended"))
        await self._persist()  # durable before anyone sees it (when the answer goes out only now)
        if self._ready is not None:
            self._publish(outcome)

    def _record(self, outcome: Outcome, phase: str) -> dict[str, Any]:
        now = time.time()
        return {
            "phase": phase,
            "verdict": outcome.verdict,
            "answer": outcome.text,
            "finish_reason": outcome.finish_reason,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "result": outcome.verification(),
            "finished_at": now if phase == "ended" else None,
        }

    def _score(self, consensus: set[str], *, none_mode: bool = False) -> None:
        """Tell reputation how each miner's slot ended (once, when the task ends)."""
        if self.reputation is None:
            return
        none_mode = none_mode or self.spec.network  # a validator's task: its verdict comes with the report
        for sl in self.slots.values():
            if sl.status in PENDING:
                continue  # cancelled by the router, not the miner's doing
            c = sl.commit
            bad = sl.reason in ("bad_reveal", "stream_mismatch")
            timeout = (sl.reason or "").startswith("timeout")
            agree = sl.node in consensus
            delta = Counters(
                assigned=1,
                acked=int(sl.acked or c is not None),
                precommitted_on_time=int(sl.precommitted or (self.immediate and c is not None)),
                committed=int(c is not None or bad),
                valid_reveals=int(c is not None),
                in_consensus=int(c is not None and agree and not none_mode),
                dissents=int(c is not None and not agree and not none_mode),
                timeouts=int(timeout),
                bad_reveals=int(bad),
                tokens=c.usage.completion_tokens if c else 0,
                gen_ms=c.elapsed_ms if c else 0,
                ttft_ms_total=int((sl.first_delta_at - sl.assigned_at) * 1000)
                if c and sl.first_delta_at
                else 0,
                ttft_samples=int(bool(c and sl.first_delta_at)),
            )
            success = None if self.spec.network else c is not None and (agree or none_mode)
            self.reputation.record(sl.node, delta, success, task_id=self.spec.id)

    async def _fail(self, exc: HivemeshError) -> None:
        self.error = exc
        log.warning("task failed task_id=%s reason=%s", self.spec.id, exc.message)
        self._score(set())
        self._event("failed", None, reason=exc.message)
        self._task(phase="failed", error=exc.message, finished_at=time.time())
        try:
            await self._persist()
        finally:
            if not self.answer.done():
                self.answer.set_exception(exc)
                self.answer.exception()  # mark retrieved: the caller may be gone
                if self.stream is not None:
                    self.stream.put_nowait(StreamEnd(error=exc))

    def _fail_slot(self, slot: Slot, reason: str) -> None:
        if slot.status not in PENDING:
            return
        slot.status = "failed"
        slot.reason = reason
        self._release(slot)
        self._slot_update(slot, status="failed", reason=reason)
        self._event("slot_failed", slot.node, reason=reason)
        if self.leader is slot:
            self.leader = None
            for other in self.slots.values():  # hand the stream to a miner that said the same so far
                if other.status in (*PENDING, "committed") and other.text.startswith(self.sent):
                    self.leader = other
                    if (
                        self.stream is not None
                        and not self.answer.done()
                        and len(other.text) > len(self.sent)
                    ):
                        self.stream.put_nowait(other.text[len(self.sent) :])  # catch up at once
                        self.sent = other.text
                    break

    def _release(self, slot: Slot) -> None:
        self.hub.release(slot.link)

    # ------------------------------------------------------------------ persistence
    # Transitions are recorded in memory with their times and written, in order, through the store's group-commit
    # writer at checkpoints: after dispatch, at most every FLUSH_S while miners work, when the answer goes out
    # (durably, before anyone sees it) and at the end (durably). A task that dies with the router is re-dispatched
    # from its task row, so the checkpoints keep its history; its life does not depend on them.

    def _task(self, **values: Any) -> None:
        self._task_vals.update(values)

    def _event(self, phase: str, node: str | None, **detail: Any) -> None:
        self._event_rows.append(
            {"task_id": self.spec.id, "ts": time.time(), "phase": phase, "node": node, "detail": detail}
        )
        rank = PHASES.index(phase) if phase in PHASES else -1
        if rank > self.phase:
            self.phase = rank
            self._task_vals["phase"] = phase

    def _slot_update(self, slot: Slot, **values: Any) -> None:
        self._slot_vals.setdefault(slot.node, {}).update(values)

    def _statements(self) -> list[Any]:
        """The pending writes as a few prebuilt statements (their compiled forms are cached by SQLAlchemy)."""
        tid = self.spec.id
        out: list[Any] = []
        if self.pending_row is not None:
            out.append((_INSERT_TASK, self.pending_row))
            self.pending_row = None
        if self._assign_rows:
            rows = [{**r, **self._slot_vals.pop(r["node"], {})} for r in self._assign_rows]
            if self.recovered:  # re-dispatched after a restart: a node met again replaces its old slot record
                out.append((_DELETE_SLOT, [{"k_task": tid, "k_node": r["node"]} for r in rows]))
            out.append((_INSERT_SLOT, [{**_SLOT_DEFAULTS, **r} for r in rows]))
        if self._event_rows:
            out.append((_INSERT_EVENT, self._event_rows))
        for node, vals in self._slot_vals.items():
            out.append((_UPDATE_SLOT, {"k_task": tid, "k_node": node, **vals}))
        if self._task_vals:
            out.append((_UPDATE_TASK, {"k_id": tid, "updated_at": time.time(), **self._task_vals}))
        self._assign_rows, self._event_rows, self._slot_vals, self._task_vals = [], [], {}, {}
        self._flushed = time.monotonic()
        return out

    def _flush(self) -> None:
        for stmt, params in self._statements():
            self.store.submit(stmt, params)

    async def _persist(self) -> None:
        await self.store.write(*self._statements())
