"""Node reputation, kept by the router: hourly counters, scores over a rolling window, levels, quarantine.

Every finished task slot becomes one ``Counters`` delta for its node's current hour bucket (``slot_counters``) and
one success or failure for its level (``core.reputation.apply_outcome``). The formulas live in
``hivemesh.core.reputation``; this module keeps the state, persists it (flushed every second, and on close) and
answers the scheduler's questions: a node's total score (its weight in the shuffle), whether it is quarantined,
whether it fits a session's SLA tier.

Several routers record work of the same node in one store: a flush sends this router's *deltas* (counters added in
SQL, outcomes applied to the stored level under a row lock: ``store.reputation``), never a value read earlier, and
every ``refresh_s`` the rows other routers wrote since the last look replace what this router holds (plus what it
has not flushed yet). A router on its own (no cluster broker) is the only writer of its store: it reads back every
``STANDALONE_REFRESH_S`` only, as a safety net (with 10,000 nodes the read-back costs ~3 % of a router's CPU at
5 s: every node that worked in the window is read again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import select

from hivemesh.core.reputation import (
    SLA_TIERS,
    WEIGHTS,
    Counters,
    LevelState,
    Scores,
    apply_outcome,
    is_quarantined,
    scores,
    sum_window,
)
from hivemesh.store import reputation as rows
from hivemesh.store import schema as s
from hivemesh.store.db import Store

log = logging.getLogger(__name__)

HOUR = 3600
STANDALONE_REFRESH_S = 60.0  # refresh_s of a router with no cluster: nobody else writes its rows
OVERLAP_S = 5.0  # a refresh re-reads rows this much older than its last look (routers' clocks, commit delays)
COUNTER_FIELDS = tuple(f.name for f in fields(Counters))

FORMULA = (
    "ratio(hits, trials) = (hits + 5 * 0.5) / (trials + 5)  (a new node starts at 0.5)\n"
    "precommit = ratio(precommitted_on_time, assigned)\n"
    "commit = ratio(valid_reveals, max(precommitted_on_time, committed))\n"
    "agreement = ratio(in_consensus, in_consensus + dissents)\n"
    f"total = ({WEIGHTS.precommit} * precommit + {WEIGHTS.commit} * commit + {WEIGHTS.agreement} * agreement)"
    f" * {WEIGHTS.bad_reveal_factor} ^ bad_reveals"
)


@dataclass(frozen=True, slots=True)
class Floors:
    """Below either line (with enough samples in the window) a node is quarantined from user sessions."""

    min_total: float = 0.50
    min_precommit: float = 0.60
    min_agreement: float = 0.50  # a node outvoted more often than not is no use, however punctual
    min_samples: int = 5


def bucket_of(ts: float) -> int:
    return int(ts // HOUR) * HOUR


class Reputation:
    def __init__(
        self,
        store: Store,
        *,
        window_s: float = 24 * HOUR,
        floors: Floors = Floors(),
        flush_s: float = 1.0,
        refresh_s: float = 5.0,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.floors = floors
        self.flush_s = flush_s
        self.refresh_s = refresh_s  # how often rows other routers wrote are read back
        self.buckets: dict[str, dict[int, Counters]] = defaultdict(dict)
        self.levels: dict[str, LevelState] = {}
        self.quarantine: dict[str, bool] = {}
        self._deltas: dict[tuple[str, int], Counters] = {}  # recorded here, not yet added to the store
        self._outcomes: dict[str, list[bool]] = {}  # level outcomes not yet applied to the store
        self._dirty_quarantine: set[str] = set()
        self._cache: dict[str, tuple[Counters, Scores]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._seen = 0.0  # rows written at or after this moment are read back by the next refresh
        self._refreshed = 0.0  # monotonic time of the last refresh
        self.on_refresh: Callable[[Iterable[str]], None] | None = (
            None  # nodes whose rows another router moved
        )

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        self._seen = time.time() - OVERLAP_S
        since = bucket_of(time.time() - self.window_s)
        for r in await self.store.fetch_all(select(s.node_stats).where(s.node_stats.c.bucket >= since)):
            self.buckets[r["node"]][r["bucket"]] = Counters(**{f: r[f] for f in COUNTER_FIELDS})
        for r in await self.store.fetch_all(select(s.node_levels)):
            self.levels[r["node"]] = LevelState(r["level"], r["streak"], r["successes"], r["attempts"])
            self.quarantine[r["node"]] = r["quarantined"]
        self._refreshed = time.monotonic()
        self._flusher = asyncio.create_task(self._flush_loop(), name="reputation-flush")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
                if time.monotonic() - self._refreshed >= self.refresh_s:
                    await self.refresh()
            except Exception as exc:  # the store is down or busy: keep the deltas, try again next time
                log.warning(
                    "reputation flush failed error=%s", str(exc).splitlines()[0][:300] if str(exc) else exc
                )

    async def flush(self) -> None:
        """Send what was recorded since the last flush: counter deltas, level outcomes, quarantine changes."""
        deltas, self._deltas = self._deltas, {}
        outcomes, self._outcomes = self._outcomes, {}
        marks, self._dirty_quarantine = self._dirty_quarantine, set()
        try:
            if deltas:
                await self.store.write(*rows.add_counters(self.store, deltas))
                deltas = {}
            if outcomes or marks:
                quarantined = {n: self.quarantine.get(n, False) for n in marks | set(outcomes)}
                stored = await rows.apply_outcomes(self.store, outcomes, quarantined)
                for node, state in stored.items():  # the store's state, plus outcomes recorded meanwhile
                    for success in self._outcomes.get(node, ()):
                        state = apply_outcome(state, success)
                    self.levels[node] = state
        except BaseException:
            for key, c in deltas.items():  # not written: they go with the next flush
                self._deltas[key] = c + self._deltas.get(key, Counters())
            for node, seq in outcomes.items():
                self._outcomes[node] = seq + self._outcomes.get(node, [])
            self._dirty_quarantine |= marks
            raise

    async def refresh(self) -> None:
        """Read back the rows other routers wrote since the last look (this router's unflushed work on top); the
        node pool rescores the nodes whose record changed."""
        self._refreshed = time.monotonic()
        # rows carry their writer's clock and commit a little after it: look back OVERLAP_S further
        since, self._seen = self._seen, time.time() - OVERLAP_S
        stats, levels = await rows.changed_since(self.store, since, bucket_of(time.time() - self.window_s))
        moved: set[str] = set()
        for node, bucket, c in stats:
            now = c + self._deltas.get((node, bucket), Counters())
            if self.buckets[node].get(bucket) != now:
                self.buckets[node][bucket] = now
                self._cache.pop(node, None)
                moved.add(node)
        for node, row in levels.items():
            state = row.state
            for success in self._outcomes.get(node, ()):
                state = apply_outcome(state, success)
            if self.levels.get(node) != state:
                self.levels[node] = state
                moved.add(node)
            if node not in self._dirty_quarantine and self.quarantine.get(node, False) != row.quarantined:
                self.quarantine[node] = row.quarantined
                moved.add(node)
        if self.on_refresh is not None and moved:
            self.on_refresh(moved)

    # ------------------------------------------------------------------ recording

    def record(self, node: str, delta: Counters, success: bool | None, *, task_id: str | None = None) -> None:
        """One finished slot: add its counters to the node's hour bucket and move its level."""
        b = bucket_of(time.time())
        per = self.buckets[node]
        per[b] = per.get(b, Counters()) + delta
        self._deltas[(node, b)] = self._deltas.get((node, b), Counters()) + delta
        self._cache.pop(node, None)
        if success is not None:
            before = self.levels.get(node, LevelState())
            after = apply_outcome(before, success)
            self.levels[node] = after
            self._outcomes.setdefault(node, []).append(success)
            if after.level != before.level:
                kind = "level_up" if after.level > before.level else "level_down"
                self.store.node_event(node, kind, task_id, f"level {before.level} -> {after.level}")
        was = self.quarantine.get(node, False)
        now = self._quarantined_now(node)
        if now != was:
            self.quarantine[node] = now
            self._dirty_quarantine.add(node)
            sc = self.scores(node)
            why = f"total={sc.total:.3f} precommit={sc.precommit:.3f}"
            self.store.node_event(node, "quarantined" if now else "released", task_id, why)
            log.warning("node %s node=%s %s", "quarantined" if now else "released", node, why)

    # ------------------------------------------------------------------ questions

    def window(self, node: str) -> Counters:
        since = bucket_of(time.time() - self.window_s)
        return sum_window(c for b, c in self.buckets.get(node, {}).items() if b >= since)

    def scores(self, node: str) -> Scores:
        hit = self._cache.get(node)
        if hit is None:
            c = self.window(node)
            hit = self._cache[node] = (c, scores(c))
        return hit[1]

    def total(self, node: str) -> float:
        return self.scores(node).total

    def level(self, node: str) -> int:
        return self.levels.get(node, LevelState()).level

    def _quarantined_now(self, node: str) -> bool:
        f = self.floors
        c = self.window(node)
        sc = self.scores(node)
        if is_quarantined(
            sc,
            min_total=f.min_total,
            min_precommit=f.min_precommit,
            min_samples=f.min_samples,
            assigned=c.assigned,
        ):
            return True
        return c.in_consensus + c.dissents >= f.min_samples and sc.agreement < f.min_agreement

    def is_quarantined(self, node: str) -> bool:
        return self.quarantine.get(node, False)

    def fits(self, node: str, sla: str) -> bool:
        min_level, min_tps = SLA_TIERS.get(sla, (0, 0.0))
        return self.level(node) >= min_level and (min_tps == 0 or self.scores(node).tokens_per_s >= min_tps)

    def explain_sla(self, sla: str) -> str:
        min_level, min_tps = SLA_TIERS.get(sla, (0, 0.0))
        return f"the {sla!r} SLA tier needs a miner at level >= {min_level} with >= {min_tps:g} tokens/s, not quarantined"

    def heatmap(self, hours: int = 24) -> dict[str, list[dict[str, Any]]]:
        """Total score per node per hour bucket (each hour scored on its own counters)."""
        since = bucket_of(time.time()) - (hours - 1) * HOUR
        out: dict[str, list[dict[str, Any]]] = {}
        for node, per in self.buckets.items():
            out[node] = [
                {"hour": b, "total": round(scores(c).total, 4), "assigned": c.assigned}
                for b, c in sorted(per.items())
                if b >= since
            ]
        return out

    def report(self, node: str) -> dict[str, Any]:
        c = self.window(node)
        sc = self.scores(node)
        lv = self.levels.get(node, LevelState())
        return {
            "node": node,
            "scores": asdict(sc),
            "counters": asdict(c),
            "level": lv.level,
            "streak": lv.streak,
            "quarantined": self.is_quarantined(node),
            "window_s": self.window_s,
            "floors": asdict(self.floors),
            "formula": FORMULA,
        }
