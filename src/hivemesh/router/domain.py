"""What the router's services pass between them: sessions, tasks and their outcome (plain frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hivemesh.config import Mode, Tolerance
from hivemesh.core.selection import draw_seed
from hivemesh.protocol.wire import ChatMessage, SamplingParams, Usage

Verdict = Literal["verified", "disputed", "unverified", "rejected"]


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
    verifiers: int = 1  # token mode: verifiers per answer
    tolerance: Tolerance = "calibrated"  # token mode: "exact" = same-profile generator and verifiers only
    model: str | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    active: bool = True
    created_at: float = 0.0

    @property
    def generators(self) -> int:
        """Miners that generate each task: one in token mode (verifiers check it), k when voting."""
        return 1 if self.mode == "token" else self.redundancy


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
    # The router's own seed for the shuffle that picks miners (recorded on the task row for audit and replay);
    # never the user's sampling seed, so a user cannot steer work to chosen miners.
    shuffle_seed: int = field(default_factory=draw_seed)


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
    verifiers: tuple[str, ...] = ()  # token mode: whose evidence accepted the answer
    evidence: dict[str, Any] | None = None  # token mode: the verifiers' summary (checked, tolerated, margins)
    fraud: tuple[dict[str, Any], ...] = ()  # token mode: fraud proofs of answers rejected in this task
    shuffle_seed: int | None = None  # the router's seed for the miner draw (for audit)

    def verification(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.mode == "token":
            extra = {
                "generator": self.answered_by,
                "verifiers": list(self.verifiers),
                "evidence": self.evidence,
                "fraud_proofs": list(self.fraud),
            }
        if self.shuffle_seed is not None:
            extra["shuffle_seed"] = str(self.shuffle_seed)
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
            **extra,
        }
