"""What the router's services pass between them: sessions, tasks and their outcome (plain frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hivemesh.config import Mode
from hivemesh.protocol.wire import ChatMessage, SamplingParams, Usage

Verdict = Literal["verified", "disputed", "unverified"]


@dataclass(frozen=True, slots=True)
class SessionSpec:
    id: str
    owner: str
    redundancy: int
    quorum: int
    mode: Mode
    threshold: float
    ack_timeout_s: float
    precommit_timeout_s: float
    commit_timeout_s: float
    max_tokens: int
    sla: str = "low"
    model: str | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    active: bool = True
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskSpec:
    id: str
    session: SessionSpec
    model: str
    kind: Literal["chat", "completion"]
    params: SamplingParams
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    stream: bool = False
    created_at: float = 0.0
    network: bool = False  # a validator's task (liveness, capability, canary): may reach quarantined nodes
    target: str | None = None  # run on this node only (a capability test of one node)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the user gets: the chosen answer and how strongly the network agreed on it."""

    task_id: str
    session_id: str
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    verdict: Verdict
    mode: Mode
    score: float
    similarity: float
    miners: tuple[str, ...]
    consensus: tuple[str, ...]
    dissent: tuple[str, ...]
    answered_by: str
    pending: tuple[str, ...] = ()  # miners still working when the answer went out
    cost: int = 0  # what the user pays for this answer, in the smallest unit (10**-18 COR)

    def verification(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "session_id": self.session_id,
            "verdict": self.verdict,
            "mode": self.mode,
            "agreement": round(self.score, 4),
            "similarity": round(self.similarity, 4),
            "miners": list(self.miners),
            "consensus": list(self.consensus),
            "dissent": list(self.dissent),
            "pending": list(self.pending),
            "answered_by": self.answered_by,
            "cost": str(self.cost),
        }
