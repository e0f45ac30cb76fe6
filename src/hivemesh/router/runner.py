"""One task's proof-of-useful-work, driven to its end: assign → ack → precommit → commit → validate → end.

A ``TaskRun`` owns k slots (one miner each). Miners' messages arrive through the hub as events; deadlines are
checked between events. A slot that misses a deadline, disconnects, reveals something other than it precommitted,
or streams text it does not commit to, fails with that reason and is replaced by the next node of the seeded
shuffle, so a task is never dropped while eligible miners exist. The shuffle is drawn from the hub's node pool index
of the task's class (``draw_for``): O(k log n), read lazily, recorded as its audit (seed, eligible set digest, the
nodes read) rather than as every eligible node.

The answer is delivered (``answer`` future, or the stream queue) as soon as a quorum agrees; the run then waits
for the remaining slots so that every miner's dissent or timeout lands on the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hivemesh.core.agreement import Decision, Mode, Reveal, decide
from hivemesh.core.pool_index import Draw, PoolIndex
from hivemesh.core.pouw import MAX_CHARS_PER_TOKEN
from hivemesh.core.reputation import Counters
from hivemesh.errors import ContextTooLong, HivemeshError, NoMinerAvailable, UpstreamFailed
from hivemesh.identity import Identity
from hivemesh.protocol import wire
from hivemesh.protocol.wire import BUSY, NodeId
from hivemesh.router.billing import billed
from hivemesh.router.domain import Outcome, TaskSpec, Verdict
from hivemesh.router.hub import MinerHub, MinerLink
from hivemesh.router.pool import Role
from hivemesh.router.record import ROW_DELAY_S, TaskRecord
from hivemesh.store.db import Store

log = logging.getLogger(__name__)

PENDING = ("assigned", "acked", "precommitted", "revealing")
REVEAL_GRACE_MIN_S = (
    0.25  # after a quorum has precommitted, the others get at least this long to precommit too
)
BUSY_RETRY_S = 0.2  # a relayed node whose holder had no room is asked again this often ...
BUSY_WAIT_S = 30.0  # ... for at most this long while the task has fewer miners than it needs
REVEAL_GRACE_SHARE = 0.5  # ... or this share of the time the quorum took, if longer


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
    size: int = 0  # characters streamed so far
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
        # token mode's network tasks (a validator's, aimed at one node) are checked by exact agreement
        self.mode: Mode = (
            "semantic"
            if sess.mode == "semantic" and embed is not None
            else (sess.mode if sess.mode in ("exact", "none") else "exact")
        )
        self.events: asyncio.Queue[tuple[str, wire.FromMiner | None]] = asyncio.Queue()
        self.slots: dict[str, Slot] = {}
        self.draw: Draw = PoolIndex().draw(spec.shuffle_seed)  # the seeded shuffle of eligible nodes (begin)
        self.reveals: list[tuple[Slot, wire.Commit]] = []
        self.vectors: list[np.ndarray] = []
        self.answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.leader: Slot | None = None
        self.sent = ""
        self.k = sess.redundancy
        self.m = sess.quorum
        self.immediate = False
        self.reveal_asked = False  # a precommit that arrives after this never counts
        self.reveal_at: float | None = (
            None  # when the reveals are asked even if some miner is still generating
        )
        self.record = TaskRecord(spec.id, store)
        self._ready: Outcome | None = (
            None  # decided with nobody left running: published with the final record
        )
        self._row_timer: asyncio.TimerHandle | None = None
        self.final: Outcome | None = None  # the outcome as recorded once every miner is classified
        self.error: HivemeshError | None = None  # why the task failed, if it did
        self.started = time.monotonic()
        # nodes another router held with no room when our assignment reached them (monotonic time they said so)
        self._busy: dict[str, float] = {}
        self._busy_since: float | None = None

    # ------------------------------------------------------------------ hub callbacks

    def on_message(self, node: str, msg: wire.FromMiner) -> None:
        self.events.put_nowait((node, msg))

    def on_disconnect(self, node: str) -> None:
        if node in self.slots:
            self.events.put_nowait((node, None))

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        """Drive the task to its end. ``begin`` must have been called."""
        if self.record.pending_row is not None:  # a fast task writes its row with its end, a slow one later
            self._row_timer = asyncio.get_running_loop().call_later(ROW_DELAY_S, self.record.flush)
        try:
            await self._start()
            while self._pending() or self._waiting_busy():
                wake = min(
                    [sl.deadline for sl in self.slots.values() if sl.status in PENDING]
                    + [t + BUSY_RETRY_S for t in self._busy.values()]
                )
                if self.reveal_at is not None and not self.reveal_asked:
                    wake = min(wake, self.reveal_at)
                timeout = wake - time.monotonic()
                try:
                    node, msg = await asyncio.wait_for(self.events.get(), max(0.0, timeout))
                except TimeoutError:
                    await self._expire()
                else:
                    await self._handle(node, msg)
                await self._progress()
                if self.record.due():
                    self.record.flush()  # long tasks: the record follows the miners while they work
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
        self.draw, eligible = draw_for(self.hub, spec)  # the router's seed: a user cannot steer the draw
        self.k = min(self.k, len(eligible)) or 1
        self.immediate = self.k == 1 and self.mode == "none"
        while len(self.slots) < self.k and self._reserve_next() is not None:
            pass
        self.record.task(**self._draw_record())
        if not self.slots:
            raise NoMinerAvailable(f"no miner serving {spec.model!r} has free capacity", retry_after=1)
        self.hub.runs[spec.id] = self

    def _draw_record(self) -> dict[str, Any]:
        """The draw as the task row keeps it: the nodes read so far, in order, and what audits the draw."""
        return {"candidates": list(self.draw.taken), "draw": self.draw.audit().to_json()}

    async def _start(self) -> None:
        for slot in list(self.slots.values()):
            await self._send_assign(slot)

    def _reserve_next(self) -> Slot | None:
        for node in self.draw:  # the seeded shuffle, read as far as needed
            link = self.hub.reserve(node)
            if link is not None:
                return self._slot(node, link)
        now = time.monotonic()
        for busy, at in list(self._busy.items()):  # relayed nodes found busy: asked again now and then
            if now - at < BUSY_RETRY_S:
                continue
            link = self.hub.reserve(busy)
            if link is None:
                self._busy[busy] = now  # no room in our view either: later
                continue
            del self._busy[busy]
            return self._slot(busy, link)
        return None

    def _slot(self, node: str, link: MinerLink) -> Slot:
        slot = Slot(node=node, link=link, index=len(self.slots))
        slot.deadline = slot.assigned_at + self.spec.session.ack_timeout_s
        self.slots[node] = slot
        return slot

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
        self.record.slot(slot.node, slot.index)
        self.record.event("assigned", slot.node)
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
            self.record.slot_update(slot.node, acked_at=time.time())
            self.record.event("acked", node)
        elif isinstance(msg, wire.Delta):
            if msg.index != len(slot.parts) or slot.status not in ("assigned", "acked"):
                self.hub.strike(slot.link, "garbage", self.spec.id, f"delta {msg.index} out of order")
                self._fail_slot(slot, "garbage")
                return
            if slot.first_delta_at is None:
                slot.first_delta_at = now
            slot.size += len(msg.text)
            if slot.size > self.spec.params.max_tokens * MAX_CHARS_PER_TOKEN:
                self.hub.strike(
                    slot.link, "garbage", self.spec.id, "streamed more text than max_tokens allows"
                )
                self._fail_slot(slot, "garbage")
                return
            slot.parts.append(msg.text)
            await self._forward(slot)
        elif isinstance(msg, wire.Precommit):
            if self.immediate or slot.status not in ("assigned", "acked"):
                self.hub.strike(slot.link, "replay", self.spec.id, "unexpected precommit")
                return
            if self.reveal_asked:  # others may have revealed already: this one could be a copy
                await slot.link.send(wire.Cancel(task_id=self.spec.id, reason="precommit after the reveal"))
                self._fail_slot(slot, "late_precommit")
                return
            slot.status = "precommitted"
            slot.acked = slot.precommitted = True
            slot.digest = msg.digest.lower().removeprefix("0x")
            slot.deadline = slot.assigned_at + sess.precommit_timeout_s + sess.commit_timeout_s
            self.record.slot_update(
                slot.node, status="precommitted", precommit_at=time.time(), digest=slot.digest
            )
            self.record.event("precommitted", node, digest=slot.digest)
        elif isinstance(msg, wire.Commit):
            await self._on_commit(slot, msg)
        elif isinstance(msg, wire.TaskFailed) and msg.code == BUSY and slot.status == "assigned":
            # its holder had no room after all (our view of its load was behind): not the miner's doing
            self._fail_slot(slot, BUSY)
            self._busy[node] = time.monotonic()
            if self._busy_since is None:
                self._busy_since = self._busy[node]
        elif isinstance(msg, wire.TaskFailed):
            self._fail_slot(slot, f"miner_error: {msg.message[:200]}")
            if msg.code == ContextTooLong.code:  # deterministic: every miner would refuse it the same way
                raise ContextTooLong(msg.message[:500])

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
            if wire.commit_digest(salt, msg.output, msg.tokens) != slot.digest:
                self.hub.strike(slot.link, "bad_reveal", self.spec.id, "reveal does not match precommit")
                self._fail_slot(slot, "bad_reveal")
                return
        if len(msg.output) > self.spec.params.max_tokens * MAX_CHARS_PER_TOKEN:
            self.hub.strike(slot.link, "garbage", self.spec.id, "committed more text than max_tokens allows")
            self._fail_slot(slot, "garbage")
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
        self.record.slot_update(
            slot.node,
            status="committed",
            commit_at=time.time(),
            output=msg.output,
            salt=msg.salt,
            elapsed_ms=msg.elapsed_ms,
            ttft_ms=ttft,
            completion_tokens=msg.usage.completion_tokens,
        )
        self.record.event("committed", slot.node)
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
            while live < self.k:
                if not await self._assign_next():
                    break
                self.record.event("swapped", None, live=live)
                live += 1
        pre = [sl for sl in self.slots.values() if sl.status in ("precommitted", "revealing", "committed")]
        generating = [sl for sl in self.slots.values() if sl.status in ("assigned", "acked")]
        now = time.monotonic()
        if len(pre) >= self.m and self.reveal_at is None:
            # a quorum has precommitted: the rest get a grace period, so an honest straggler still counts, then
            # the reveals are asked and any precommit after that is not counted (it could be a copy)
            self.reveal_at = now + max(REVEAL_GRACE_MIN_S, REVEAL_GRACE_SHARE * (now - self.started))
        due = self.reveal_asked or (self.reveal_at is not None and now >= self.reveal_at)
        if pre and (not generating or due):
            for sl in pre:
                if sl.status == "precommitted":
                    sl.status = "revealing"
                    self.reveal_asked = True
                    sl.deadline = time.monotonic() + self.spec.session.commit_timeout_s
                    self.record.event("reveal_requested", sl.node)
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
            dissent=self._dissent(set(d.consensus)),
            answered_by=lead.node,
            pending=tuple(n for n, sl in self.slots.items() if sl.status in PENDING),
        )
        if self.cost_of is not None:
            outcome = replace(outcome, cost=self.cost_of(self, outcome))
        self.record.event("validated", None, verdict=verdict, agreement=d.score)
        if not self._pending():
            self._ready = outcome  # nobody left running: _finish writes the whole record once, then publishes
            return
        self.record.task(**self._record(outcome, "validated"))
        await self.record.persist()  # durable before anyone sees it
        self._publish(outcome)

    def _dissent(self, consensus: set[str]) -> tuple[str, ...]:
        """Miners that ended outside the consensus; a late precommit is not counted either way."""
        return tuple(
            n
            for n, sl in self.slots.items()
            if sl.status not in PENDING and n not in consensus and sl.reason != "late_precommit"
        )

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

    def _waiting_busy(self) -> bool:
        """Fewer miners than the task needs, and a relayed node that was busy may have room again soon."""
        if not self._busy or self.answer.done() or self._busy_since is None:
            return False
        if time.monotonic() - self._busy_since > BUSY_WAIT_S:
            return False
        live = sum(1 for sl in self.slots.values() if sl.status in PENDING or sl.status == "committed")
        return live < self.k

    async def _finish(self) -> None:
        if not self.reveals:
            reasons = sorted({sl.reason or "?" for sl in self.slots.values()})
            if reasons == [BUSY]:
                raise NoMinerAvailable(
                    f"every miner for {self.spec.model!r} stayed busy for {BUSY_WAIT_S:.0f}s", retry_after=2
                )
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
                dissent=self._dissent(consensus),
                pending=(),
            )
        voted = outcome.verdict == "verified"  # a disputed task proves nobody wrong: no dissent strikes
        for sl, _ in self.reveals:
            agree = sl.node in outcome.consensus
            self.record.slot_update(sl.node, in_consensus=agree if voted else None)
            if not agree and voted:
                self.hub.strike(sl.link, "dissent", self.spec.id, "outvoted")
            sl.link.finished += 1
            self.hub.finished_counts[sl.node] = sl.link.finished
        self.final = outcome
        self._score(
            set(outcome.consensus), none_mode=self.mode == "none", judged=voted or self.mode == "none"
        )
        self.record.event("ended", None, verdict=outcome.verdict)
        self.record.task(**self._record(outcome, "ended"))
        await self.record.persist()  # durable before anyone sees it (when the answer goes out only now)
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
            **self._draw_record(),
        }

    def _score(self, consensus: set[str], *, none_mode: bool = False, judged: bool = True) -> None:
        """Tell reputation how each miner's slot ended (once, when the task ends). An unjudged (disputed) task
        counts neither agreement nor dissent, and moves nobody's level."""
        if self.reputation is None:
            return
        none_mode = none_mode or self.spec.network  # a validator's task: its verdict comes with the report
        for sl in self.slots.values():
            if sl.status in PENDING or sl.reason == BUSY:
                continue  # cancelled by the router, or refused by a busy holder: not the miner's doing
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
                in_consensus=int(c is not None and agree and not none_mode and judged),
                dissents=int(c is not None and not agree and not none_mode and judged),
                timeouts=int(timeout),
                bad_reveals=int(bad),
                tokens=c.usage.completion_tokens if c else 0,
                gen_ms=c.elapsed_ms if c else 0,
                ttft_ms_total=int((sl.first_delta_at - sl.assigned_at) * 1000)
                if c and sl.first_delta_at
                else 0,
                ttft_samples=int(bool(c and sl.first_delta_at)),
            )
            success = (
                None
                if self.spec.network or (c is not None and not judged)
                else (c is not None and (agree or none_mode))
            )
            self.reputation.record(sl.node, delta, success, task_id=self.spec.id)
        self.hub.rescore(self.slots)

    async def _fail(self, exc: HivemeshError) -> None:
        self.error = exc
        log.warning("task failed task_id=%s reason=%s", self.spec.id, exc.message)
        self._score(set())
        self.record.event("failed", None, reason=exc.message)
        self.record.task(phase="failed", error=exc.message, finished_at=time.time(), **self._draw_record())
        try:
            await self.record.persist()
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
        self.record.slot_update(slot.node, status="failed", reason=reason)
        self.record.event("slot_failed", slot.node, reason=reason)
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


def draw_for(
    hub: MinerHub, spec: TaskSpec, *, role: Role = "any", seed: int | None = None
) -> tuple[Draw, Collection[str]]:
    """The seeded shuffle of the nodes eligible for ``spec`` with a free slot now (a frozen snapshot of the hub's
    node pool index: O(1) to take, O(log n) per node read), and every node eligible for it, busy or not."""
    key = hub.eligibility(
        spec.model, spec.session.sla, network=spec.network, billed=billed(spec.session.owner), role=role
    )
    cls = hub.eligible(key)
    seed = spec.shuffle_seed if seed is None else seed
    if spec.target is None:
        return cls.index.draw(seed), cls.members
    link = hub.link(spec.target) if spec.target in cls.members else None
    if link is None:
        return PoolIndex().draw(seed), ()
    return PoolIndex([hub.pool.candidate(link)]).draw(seed), (spec.target,)
