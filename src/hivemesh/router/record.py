"""A task's record, written in checkpoints: the task row, its slot rows (one per miner) and its history.

Transitions are recorded in memory with their times and written, in order, through the store's group-commit
writer at checkpoints: after dispatch, at most every ``FLUSH_S`` while miners work, when the answer goes out
(durably, before anyone sees it) and at the end (durably). A task that dies with the router is re-dispatched from
its task row, so the checkpoints keep its history; its life does not depend on them. Both runners (voting and
token mode) keep their record through this one class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, delete, insert, update

from hivemesh.store import schema as s
from hivemesh.store.db import Store

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
_SLOT_DEFAULTS: dict[str, Any] = dict.fromkeys(
    c.name for c in s.assignments.columns
)  # executemany rows share keys
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
)  # the task phase only moves on
MAX_DETAIL = 300  # characters of a miner-supplied string kept in a history line


class TaskRecord:
    def __init__(self, task_id: str, store: Store) -> None:
        self.task_id = task_id
        self.store = store
        self.phase = 0
        self.recovered = False  # re-dispatched after a restart: a node met again replaces its old slot record
        self.pending_row: dict[str, Any] | None = None  # the task row, written with the first checkpoint
        self._task_vals: dict[str, Any] = {}
        self._event_rows: list[dict[str, Any]] = []
        self._assign_rows: list[dict[str, Any]] = []
        self._slot_vals: dict[str, dict[str, Any]] = {}
        self._slotted: set[str] = set()
        self.watchers: list[
            Callable[[str, str | None, dict[str, Any]], None]
        ] = []  # told of each history line
        self.flushed = time.monotonic()

    def task(self, **values: Any) -> None:
        self._task_vals.update(values)

    def event(self, phase: str, node: str | None, **detail: Any) -> None:
        detail = {k: v[:MAX_DETAIL] if isinstance(v, str) else v for k, v in detail.items()}
        self._event_rows.append(
            {"task_id": self.task_id, "ts": time.time(), "phase": phase, "node": node, "detail": detail}
        )
        for watch in self.watchers:
            watch(phase, node, detail)
        rank = PHASES.index(phase) if phase in PHASES else -1
        if rank > self.phase:
            self.phase = rank
            self._task_vals["phase"] = phase

    def watch(self, emit: Callable[[str, str | None, dict[str, Any]], None]) -> None:
        """Call ``emit(phase, node, detail)`` for each history line recorded so far (not yet written: a task is
        watched as soon as it has started) and from now on."""
        for row in self._event_rows:
            emit(row["phase"], row["node"], dict(row["detail"] or {}))
        self.watchers.append(emit)

    def slot(self, node: str, index: int, **values: Any) -> None:
        """A new slot row (a miner took a role in the task). A node that takes a second role in the same task
        (a verifier that regenerates a rejected answer) has its one row start over; the history keeps both."""
        row = {"slot": index, "status": "assigned", "assigned_at": time.time(), **values}
        if node in self._slotted:
            cleared = dict.fromkeys(
                (
                    "acked_at",
                    "precommit_at",
                    "commit_at",
                    "digest",
                    "output",
                    "salt",
                    "in_consensus",
                    "elapsed_ms",
                    "ttft_ms",
                    "completion_tokens",
                    "reason",
                    "evidence",
                )
            )
            self.slot_update(node, **cleared, **row)
            return
        self._slotted.add(node)
        self._assign_rows.append({"task_id": self.task_id, "node": node, **row})

    def slot_update(self, node: str, **values: Any) -> None:
        self._slot_vals.setdefault(node, {}).update(values)

    def statements(self) -> list[Any]:
        """The pending writes as a few prebuilt statements (their compiled forms are cached by SQLAlchemy)."""
        tid = self.task_id
        out: list[Any] = []
        if self.pending_row is not None:
            out.append((_INSERT_TASK, self.pending_row))
            self.pending_row = None
        if self._assign_rows:
            rows = [{**r, **self._slot_vals.pop(r["node"], {})} for r in self._assign_rows]
            if self.recovered:
                out.append((_DELETE_SLOT, [{"k_task": tid, "k_node": r["node"]} for r in rows]))
            out.append((_INSERT_SLOT, [{**_SLOT_DEFAULTS, **r} for r in rows]))
        if self._event_rows:
            out.append((_INSERT_EVENT, self._event_rows))
        for node, vals in self._slot_vals.items():
            out.append((_UPDATE_SLOT, {"k_task": tid, "k_node": node, **vals}))
        if self._task_vals:
            out.append((_UPDATE_TASK, {"k_id": tid, "updated_at": time.time(), **self._task_vals}))
        self._assign_rows, self._event_rows, self._slot_vals, self._task_vals = [], [], {}, {}
        self.flushed = time.monotonic()
        return out

    def flush(self) -> None:
        for stmt, params in self.statements():
            self.store.submit(stmt, params)

    def due(self) -> bool:
        return time.monotonic() - self.flushed > FLUSH_S

    async def persist(self) -> None:
        await self.store.write(*self.statements())
