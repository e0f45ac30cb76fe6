"""One token-mode task, run: the async shell around ``core.pouw.TokenPoUW``.

The state machine decides; this class only carries out its effects (draw and reserve miners, send assignments,
reveal and verify requests, strike, record, deliver) and feeds back what the miners and the clock did. It keeps
the same surface as the voting runner (``begin``, ``run``, ``answer``, ``stream``, ``final``, ``error``), so the
service, the APIs, billing and the observers treat both alike.

Streaming: the generator's text goes to the user as it comes. If the verified answer does not extend what the
user was sent (the streaming generator was proven to cheat, or died mid-way and the regeneration differs), the
stream ends with the verdict ``rejected``; the verified answer is on the task record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from hivemesh.core import pouw
from hivemesh.core.pool_index import Draw, PoolIndex
from hivemesh.core.reputation import Counters
from hivemesh.core.verdict import TokenVerdict, summary
from hivemesh.errors import ContextTooLong, HivemeshError, NoMinerAvailable, UpstreamFailed
from hivemesh.identity import Identity
from hivemesh.protocol import wire
from hivemesh.protocol.wire import NodeId
from hivemesh.router.domain import Outcome, TaskSpec, Verdict
from hivemesh.router.hub import MinerHub, MinerLink
from hivemesh.router.record import ROW_DELAY_S, TaskRecord
from hivemesh.router.runner import BUSY_RETRY_S, StreamEnd, TaskRun, draw_for
from hivemesh.store.db import Store

log = logging.getLogger(__name__)

VERIFIER_WAIT_S = 0.05  # how often a verifier draw that found every verifier busy is tried again
VERIFIER_QUEUE_S = 30.0  # how long a claim waits for a busy verifier before it is delivered unverified


def policy_of(spec: TaskSpec) -> pouw.TokenPolicy:
    sess = spec.session
    return pouw.TokenPolicy(
        verifiers=sess.verifiers,
        ack_timeout_s=sess.ack_timeout_s,
        precommit_timeout_s=sess.precommit_timeout_s,
        commit_timeout_s=sess.commit_timeout_s,
        verify_timeout_s=sess.precommit_timeout_s,  # a prefill never takes longer than the generation
        max_tokens=spec.params.max_tokens,
        exact_only=sess.tolerance == "exact",
    )


NUMERICS_WINDOW = 64  # shuffled candidates a verifier draw looks through for the generator's numeric profile


def _card(link: MinerLink, model: str) -> wire.ModelCard | None:
    return next((c for c in link.cards if c.id == model), None)


class TokenRun:
    def __init__(
        self,
        spec: TaskSpec,
        *,
        hub: MinerHub,
        store: Store,
        identity: Identity,
        reputation: Any = None,  # router.reputation.Reputation: told how every role ended
        cost_of: Any = None,  # (run, outcome) -> what the user pays, in the smallest unit
        stream: asyncio.Queue[str | StreamEnd] | None = None,
    ) -> None:
        self.spec = spec
        self.hub = hub
        self.store = store
        self.identity = identity
        self.reputation = reputation
        self.cost_of = cost_of
        self.stream = stream
        self.k = 1
        self.mode = "token"
        self.machine = pouw.TokenPoUW(spec.id, policy_of(spec))
        self.record = TaskRecord(spec.id, store)
        self.events: asyncio.Queue[pouw.Event] = asyncio.Queue()
        self.answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.draw: Draw = PoolIndex().draw(spec.shuffle_seed)  # the generator shuffle (verifiers: their own)
        self.links: dict[str, MinerLink] = {}  # every node with a role in this task
        self.reserved: dict[str, MinerLink] = {}  # nodes holding capacity for this task right now
        self._busy: dict[
            NodeId, None
        ] = {}  # generator candidates the shuffle gave that were busy then (ordered)
        # exact-only sessions: the numeric profiles of the nodes eligible to verify (read on first need)
        self._profiles: Counter[str] | None = None
        self._verify_members: frozenset[str] = frozenset()
        self.texts: dict[str, list[str]] = {}  # what each generator streamed
        self.sizes: dict[str, int] = {}
        self.sent = ""  # what the user has been sent
        self.slots: dict[str, Any] = {}  # the voting runner's per-miner slots (none here; for the oracle)
        self.final: Outcome | None = None
        self.error: HivemeshError | None = None
        self.started = time.monotonic()
        self._effects: list[pouw.Effect] = []
        self._draw_retry: pouw.Draw | None = None
        self._draw_since = 0.0
        # relayed node -> when its router answered busy (not drawn again for BUSY_RETRY_S)
        self._cooling: dict[str, float] = {}
        self.struck: dict[str, str] = {}  # node -> the last strike this task gave it
        self._row_timer: asyncio.TimerHandle | None = None
        self._index = 0

    # ------------------------------------------------------------------ hub callbacks

    def on_message(self, node: str, msg: wire.FromMiner) -> None:
        now = time.monotonic()
        if isinstance(msg, wire.Ack):
            self.events.put_nowait(pouw.Acked(node, now))
        elif isinstance(msg, wire.Delta):
            self._delta(node, msg)
        elif isinstance(msg, wire.Precommit):
            self.events.put_nowait(pouw.Precommitted(node, msg.digest, now))
        elif isinstance(msg, wire.Commit):
            streamed = "".join(self.texts[node]) if node in self.texts else None
            self.events.put_nowait(pouw.Revealed(node, msg, now, streamed=streamed))
        elif isinstance(msg, wire.Evidence):
            self.events.put_nowait(pouw.EvidenceIn(node, msg, now))
        elif isinstance(msg, wire.TaskFailed):
            if msg.code == wire.BUSY:  # its router had no room: asked again after a while, not struck
                self._cooling[node] = now
                self._busy[NodeId(node)] = None
            self.events.put_nowait(pouw.Failed(node, f"miner_error: {msg.message[:200]}", now, code=msg.code))

    def on_disconnect(self, node: str) -> None:
        if node in self.links:
            self.events.put_nowait(pouw.Failed(node, "disconnected", time.monotonic()))

    def _delta(self, node: str, msg: wire.Delta) -> None:
        gen = self.machine.generator
        if gen is None or gen.node != node or gen.status not in ("assigned", "acked"):
            link = self.links.get(node) or self.hub.links.get(node)
            if link is not None:
                self.hub.strike(link, "garbage", self.spec.id, "delta from a node that is not generating")
            return
        parts = self.texts.setdefault(node, [])
        size = self.sizes.get(node, 0) + len(msg.text)
        self.sizes[node] = size
        if msg.index != len(parts) or size > self.spec.params.max_tokens * pouw.MAX_CHARS_PER_TOKEN:
            self.hub.strike(
                self.links[node], "garbage", self.spec.id, "delta out of order or over max_tokens"
            )
            self.events.put_nowait(pouw.Failed(node, "garbage", time.monotonic()))
            return
        parts.append(msg.text)
        self._forward("".join(parts))

    def _forward(self, text: str) -> None:
        if self.stream is None or self.answer.done():
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.stream.put_nowait(text[len(self.sent) :])
            self.sent = text

    # ------------------------------------------------------------------ start

    def begin(self) -> None:
        """Draw and reserve the generator, synchronously (called by the scheduler at admission). Raises
        NoMinerAvailable if no miner that can serve token mode has room."""
        spec = self.spec
        self.draw, members = draw_for(self.hub, spec, role="tokens")
        if not members:
            raise NoMinerAvailable(
                f"no miner serving {spec.model!r} can generate for token verification", retry_after=1
            )
        if self.machine.policy.exact_only and not any(self._checkable(n) for n in members):
            raise NoMinerAvailable(
                f"no two miners serving {spec.model!r} advertise the same numeric profile, and this session's "
                "tolerance is exact (a generator needs a verifier that computes its logits bit for bit)",
                retry_after=1,
            )
        self._effects = self.machine.start()
        self._resolve_draws()
        if self.machine.generator is None:
            raise NoMinerAvailable(f"no miner serving {spec.model!r} has free capacity", retry_after=1)
        self.hub.runs[spec.id] = self

    def _draw_record(self) -> dict[str, Any]:
        """The generator draw as the task row keeps it (nodes read, in order, and its audit); verifier draws
        are replayed from their derived seeds (``_verifier_seed``) and named on the slot rows."""
        return {"candidates": list(self.draw.taken), "draw": self.draw.audit().to_json()}

    def _resolve_draws(self) -> None:
        """Answer every Draw effect at the head of the queue with a Drawn event, applied at once."""
        pending, self._effects = self._effects, []
        for eff in pending:
            if isinstance(eff, pouw.Draw):
                nodes = self._draw(eff)
                if nodes is None:  # verifiers exist but are all busy: try again shortly
                    self._draw_retry, self._draw_since = eff, time.monotonic()
                    if self._capacity_freed not in self.hub.listeners:
                        # first in line: a claim waiting for its check goes before new generations
                        self.hub.listeners.insert(0, self._capacity_freed)
                    continue
                self._effects += self.machine.apply(self._drawn(eff.role, nodes))
            else:
                self._effects.append(eff)
        if any(isinstance(e, pouw.Draw) for e in self._effects):
            self._resolve_draws()

    def _draw(self, d: pouw.Draw) -> list[str] | None:
        exact_only = self.machine.policy.exact_only
        if d.role == "generator":  # nodes found busy by an earlier draw first, then the shuffle read on
            order: Iterator[NodeId] = itertools.chain(list(self._busy), self.draw)
            if exact_only:  # only a generator whose logits another verifier can reproduce bit for bit
                order = (n for n in order if self._checkable(n))
            more = True
        else:  # verifiers: drawn only now, after the precommit, from a seed the router committed to
            order, members = draw_for(self.hub, self.spec, role="verify", seed=self._verifier_seed())
            if exact_only:  # only verifiers of the generator's profile (O(n) to know whether any exists)
                profile = self._generator_profile()
                order = (n for n in order if self._numerics(n) == profile)
                more = any(n not in d.exclude and self._numerics(n) == profile for n in members)
            else:
                more = len(members) > sum(1 for n in d.exclude if n in members)  # eligible, maybe busy
                order = self._same_numerics_first(order)
        got: list[str] = []
        cooling = False  # a node skipped for now: its router answered busy a moment ago
        now = time.monotonic()
        while len(got) < d.count:  # read no further than needed: the shuffle is read once, for every redraw
            node = next(order, None)
            if node is None:
                break
            if node in d.exclude:
                continue
            if (at := self._cooling.get(node)) is not None:
                if now - at < BUSY_RETRY_S:
                    cooling = True
                    if d.role == "generator":
                        self._busy[node] = None
                    continue
                del self._cooling[node]
            # a node this task already holds (a verifier whose check is over) may take the next role without
            # queueing for itself: with few miners the honest regeneration would otherwise find none free
            link = self.reserved.get(node) or self.hub.reserve(node)
            if link is not None:
                self.links[node] = self.reserved[node] = link
                got.append(node)
                self._busy.pop(node, None)
            elif d.role == "generator":
                self._busy[node] = None  # busy now: a later regeneration asks it again
        if d.role == "generator":
            self.record.task(**self._draw_record())
        if not got and self._draw_retry is None and (cooling or (d.role == "verifier" and more)):
            return None  # wait for room (a generator only for a node whose router answered busy)
        return got

    def _numerics(self, node: str) -> str:
        link = self.links.get(node) or self.hub.link(node)
        card = _card(link, self.spec.model) if link is not None else None
        return card.numerics if card is not None else ""

    def _drawn(self, role: pouw.Role, nodes: Iterable[str]) -> pouw.Drawn:
        nodes = tuple(nodes)
        profiles = tuple(self._numerics(n) for n in nodes)
        return pouw.Drawn(role, nodes, time.monotonic(), numerics=profiles)

    def _checkable(self, node: str) -> bool:
        """For an exact-only session: ``node`` advertises a numeric profile that another node eligible to verify
        shares (counted once per task, O(n) in the verifiers)."""
        if self._profiles is None:
            _, members = draw_for(self.hub, self.spec, role="verify", seed=0)
            self._profiles = Counter(p for p in map(self._numerics, members) if p)
            self._verify_members = frozenset(members)
        profile = self._numerics(node)
        return bool(profile) and self._profiles[profile] - (node in self._verify_members) >= 1

    def _generator_profile(self) -> str:
        gens = self.machine.generators
        return gens[-1].numerics if gens else ""

    def _same_numerics_first(self, order: Iterator[NodeId]) -> Iterator[NodeId]:
        """The shuffle's order, except that among its first ``NUMERICS_WINDOW`` nodes those that compute the
        generator's logits bit for bit (the same ``ModelCard.numerics``) go first: their check is exact, not
        within a tolerance. Bounded, so a draw stays O(k log n) however large the pool."""
        profile = self._generator_profile()
        if not profile:
            yield from order
            return
        later: list[NodeId] = []
        for i, node in enumerate(order):
            if i >= NUMERICS_WINDOW:
                yield from later
                later = []
                yield node
            elif self._numerics(node) == profile:
                yield node
            else:
                later.append(node)
        yield from later

    def _verifier_seed(self) -> int:
        seed = f"{self.spec.shuffle_seed}:verify:{len(self.machine.checks)}"
        return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8]) >> 1

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        if self.record.pending_row is not None:
            self._row_timer = asyncio.get_running_loop().call_later(ROW_DELAY_S, self.record.flush)
        try:
            while True:
                await self._execute()
                if self.machine.phase is pouw.Phase.DONE:
                    break
                deadline = self.machine.deadline()
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self._draw_retry is not None:
                    wait = VERIFIER_WAIT_S if wait is None else min(wait, VERIFIER_WAIT_S)
                try:
                    ev = await asyncio.wait_for(self.events.get(), wait)
                except TimeoutError:
                    ev = pouw.Expired(time.monotonic())
                if isinstance(ev, pouw.Revealed | pouw.EvidenceIn):
                    self._free(ev.node)  # the miner's part is done: its capacity is free again
                self._effects += self.machine.apply(ev)
                if self._draw_retry is not None and self._retry_draw():
                    continue
                if self.record.due():
                    self.record.flush()
        except HivemeshError as exc:
            await self._fail(exc)
        except Exception as exc:
            log.exception("token task run crashed task_id=%s", self.spec.id)
            await self._fail(UpstreamFailed(f"internal error while running the task: {exc}"))
        finally:
            if self._row_timer is not None:
                self._row_timer.cancel()
            for node in self.machine.busy():
                link = self.links.get(node)
                if link is not None:
                    await link.send(wire.Cancel(task_id=self.spec.id, reason="task ended"))
            self._draw_retry = None
            self._unlisten()
            for node in list(self.reserved):
                self._free(node)
            self.hub.runs.pop(self.spec.id, None)

    def _take_waiting(self) -> pouw.Drawn | None:
        """Try the waiting draw again: the nodes it reserved, or None while every candidate is busy."""
        d, self._draw_retry = self._draw_retry, None
        if d is None:
            self._unlisten()
            return None
        nodes = self._draw(d)
        if nodes is None:
            self._draw_retry = d
            return None
        self._unlisten()
        return self._drawn(d.role, nodes)

    def _capacity_freed(self) -> None:
        """A hub listener while a verifier draw waits: capacity may be free; take it before the scheduler can
        give it to a new task, and hand the draw to the run as an event."""
        if (drawn := self._take_waiting()) is not None:
            self.events.put_nowait(drawn)

    def _unlisten(self) -> None:
        with contextlib.suppress(ValueError):
            self.hub.listeners.remove(self._capacity_freed)

    def _retry_draw(self) -> bool:
        """The run loop's turn at the waiting draw: True when the machine was told (drawn, or given up on)."""
        role = self._draw_retry.role if self._draw_retry is not None else "verifier"
        drawn = self._take_waiting()
        if drawn is None:
            if time.monotonic() - self._draw_since <= min(
                VERIFIER_QUEUE_S, policy_of(self.spec).verify_timeout_s
            ):
                return False
            self._draw_retry = None  # waited long enough: the machine decides on what it has
            self._unlisten()
            drawn = self._drawn(role, ())
        self._effects += self.machine.apply(drawn)
        return True

    def _free(self, node: str) -> None:
        link = self.reserved.pop(node, None)
        if link is not None:
            self.hub.release(link)

    async def _execute(self) -> None:
        self._resolve_draws()
        while self._effects:
            eff = self._effects.pop(0)
            await self._effect(eff)
            self._resolve_draws()

    async def _effect(self, eff: pouw.Effect) -> None:
        tid = self.spec.id
        if isinstance(eff, pouw.SendAssign):
            self._index += 1
            self.record.slot(eff.node, self._index - 1, role="generator")
            await self._send(eff.node, self._assign())
        elif isinstance(eff, pouw.SendReveal):
            self.record.slot_update(
                eff.node,
                status="precommitted",
                precommit_at=time.time(),
                digest=self.machine.generator.digest if self.machine.generator else None,
            )
            await self._send(eff.node, wire.RevealRequest(task_id=tid))
        elif isinstance(eff, pouw.SendVerify):
            self._index += 1
            self.record.slot(eff.node, self._index - 1, role="verifier")
            await self._send(eff.node, self._verify(eff))
        elif isinstance(eff, pouw.Cancel):
            link = self.links.get(eff.node)
            if link is not None and eff.node in self.reserved:
                await link.send(wire.Cancel(task_id=tid, reason="replaced"))
            self._free(eff.node)
        elif isinstance(eff, pouw.Strike):
            self.struck[eff.node] = eff.kind
            link = self.links.get(eff.node) or self.hub.links.get(eff.node)
            if link is not None:
                self.hub.strike(link, eff.kind, tid, eff.detail)
        elif isinstance(eff, pouw.Note):
            self._note(eff)
        elif isinstance(eff, pouw.Deliver):
            await self._deliver(eff)
        elif isinstance(eff, pouw.FailTask):
            if eff.code == ContextTooLong.code:
                raise ContextTooLong(eff.reason.removeprefix("miner_error: "))
            raise UpstreamFailed(eff.reason)

    async def _send(self, node: str, msg: wire.Assign | wire.Verify | wire.RevealRequest) -> None:
        if not await self.links[node].send(msg):  # the link signs assignments (router.links)
            self.events.put_nowait(pouw.Failed(node, "disconnected", time.monotonic()))

    def _assign(self) -> wire.Assign:
        spec = self.spec
        return wire.Assign(
            task_id=spec.id,
            model=spec.model,
            kind=spec.kind,
            messages=spec.messages,
            prompt=spec.prompt,
            params=spec.params,
            stream=self.stream is not None,
            reveal="on_request",
            deadline_ms=int(spec.session.precommit_timeout_s * 1000),
        )

    def _verify(self, eff: pouw.SendVerify) -> wire.Verify:
        spec, c = self.spec, eff.claim
        return wire.Verify(
            task_id=spec.id,
            model=spec.model,
            kind=spec.kind,
            messages=spec.messages,
            prompt=spec.prompt,
            params=spec.params,
            tokens=c.tokens,
            output=c.output,
            finish_reason=c.finish_reason,
            round=eff.round,
            deadline_ms=int(policy_of(spec).verify_timeout_s * 1000),
        )

    def _note(self, n: pouw.Note) -> None:
        self.record.event(n.phase, n.node, **n.detail)
        if n.node is None:
            return
        if n.phase == "acked":
            self.record.slot_update(n.node, status="acked", acked_at=time.time())
        elif n.phase == "committed":
            gen = self.machine.generator
            c = gen.commit if gen is not None else None
            if c is not None:
                self.record.slot_update(
                    n.node,
                    status="committed",
                    commit_at=time.time(),
                    output=c.output,
                    salt=c.salt,
                    elapsed_ms=c.elapsed_ms,
                    completion_tokens=c.usage.completion_tokens,
                )
        elif n.phase == "evidence":
            self.record.slot_update(
                n.node,
                status="committed",
                commit_at=time.time(),
                evidence=n.detail,
                in_consensus=bool(n.detail.get("accepted")),
            )
        elif n.phase == "slot_failed":
            self.record.slot_update(n.node, status="failed", reason=str(n.detail.get("reason", "")))
        elif n.phase == "fraud":
            self.record.slot_update(n.node, status="rejected", reason="fraud proof", in_consensus=False)

    # ------------------------------------------------------------------ ends

    async def _deliver(self, d: pouw.Deliver) -> None:
        c = d.answer
        verdict: Verdict = d.verdict
        if self.stream is not None:
            if c.output.startswith(self.sent):
                if len(c.output) > len(self.sent):
                    self.stream.put_nowait(c.output[len(self.sent) :])
                    self.sent = c.output
            else:  # the user was sent text that is not the verified answer
                verdict = "rejected"
        used = [g.node for g in self.machine.generators] + [ch.node for ch in self.machine.checks]
        consensus = (d.generator, *d.verifiers) if verdict == "verified" else (d.generator,)
        outcome = Outcome(
            task_id=self.spec.id,
            session_id=self.spec.session.id,
            text=c.output,
            finish_reason=c.finish_reason,
            usage=c.usage,
            verdict=verdict,
            mode="token",
            score=1.0 if verdict == "verified" else 0.0,
            similarity=1.0 if verdict == "verified" else 0.0,
            miners=tuple(used),
            consensus=consensus if verdict != "rejected" else (),
            dissent=(),
            answered_by=d.generator,
            verifiers=d.verifiers,
            evidence=_evidence_summary(d.verdicts),
            fraud=tuple(dict(f) for f in d.fraud),
            shuffle_seed=self.spec.shuffle_seed,
        )
        if self.cost_of is not None:
            outcome = replace(outcome, cost=self.cost_of(self, outcome))
        self.final = outcome
        self._score(outcome)
        self.record.event("ended", None, verdict=outcome.verdict)
        self.record.task(
            phase="ended",
            verdict=outcome.verdict,
            answer=outcome.text,
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.usage.prompt_tokens,
            completion_tokens=outcome.usage.completion_tokens,
            result=outcome.verification(),
            finished_at=time.time(),
        )
        await self.record.persist()  # durable before anyone sees it
        for node in (d.generator, *d.verifiers):
            if (link := self.links.get(node)) is not None:
                link.finished += 1
                self.hub.finished_counts[node] = link.finished
        self.answer.set_result(outcome)
        if self.stream is not None:
            self.stream.put_nowait(StreamEnd(outcome))

    def _score(self, outcome: Outcome | None) -> None:
        """Tell reputation how each role ended (once, when the task ends)."""
        if self.reputation is None:
            return
        verified = outcome is not None and outcome.verdict == "verified"
        for g in self.machine.generators:
            if g.status in pouw.PENDING_GEN or g.reason == wire.BUSY:
                continue  # cancelled by the router, or refused by a busy holder: not the miner's doing
            c = g.commit
            won = verified and outcome is not None and g.node == outcome.answered_by
            fraud = g.status == "rejected" and any(f.get("generator") == g.node for f in self.machine.fraud)
            bad = g.reason in ("bad_reveal", "stream_mismatch") or fraud
            delta = Counters(
                assigned=1,
                acked=int(g.status != "assigned" or c is not None),
                precommitted_on_time=int(bool(g.digest)),
                committed=int(c is not None or bad),
                valid_reveals=int(c is not None),
                in_consensus=int(won),
                dissents=0,
                timeouts=int(g.reason.startswith("timeout")),
                bad_reveals=int(bad),
                tokens=c.usage.completion_tokens if c else 0,
                gen_ms=c.elapsed_ms if c else 0,
            )
            success = True if won else (False if bad or g.reason.startswith("timeout") else None)
            self.reputation.record(g.node, delta, success, task_id=self.spec.id)
        for ch in self.machine.checks:
            if ch.status == "asked" or ch.reason == wire.BUSY:
                continue
            valid = ch.verdict is not None
            invalid = self.struck.get(ch.node) == "invalid_evidence"
            # an accusation the rechecks refuted counts like any valid check: their word against the accuser's is
            # no proof (core.pouw), so it costs the accuser no reputation either
            delta = Counters(
                assigned=1,
                acked=int(valid),
                precommitted_on_time=int(valid),
                committed=int(valid),
                valid_reveals=int(valid),
                in_consensus=int(valid),
                dissents=0,
                timeouts=int(ch.reason.startswith("timeout")),
                bad_reveals=int(invalid),
            )
            success = False if invalid or ch.reason.startswith("timeout") else (True if valid else None)
            self.reputation.record(ch.node, delta, success, task_id=self.spec.id)
        self.hub.rescore(self.links)

    async def _fail(self, exc: HivemeshError) -> None:
        self.error = exc
        log.warning("task failed task_id=%s reason=%s", self.spec.id, exc.message)
        self._score(None)
        self.record.event("failed", None, reason=exc.message)
        self.record.task(phase="failed", error=exc.message, finished_at=time.time())
        try:
            await self.record.persist()
        finally:
            if not self.answer.done():
                self.answer.set_exception(exc)
                self.answer.exception()  # mark retrieved: the caller may be gone
                if self.stream is not None:
                    self.stream.put_nowait(StreamEnd(error=exc))


def _evidence_summary(verdicts: tuple[TokenVerdict, ...]) -> dict[str, Any]:
    return {"checks": [summary(v) for v in verdicts]}


Run = TaskRun | TokenRun  # either runner: what the service hands out and its observers are told about
