"""What each miner of an ended task answered, read from its run (voting slots or token-mode generator and verifier
slots): every miner's answer for ``disagreement_policy: "return_all"`` and the chosen answer's logprobs.

Logprobs are the generator's own report (``Commit.logprobs``: its sampler's distribution at each position); in
token mode a verifier recomputes each claimed token's log-probability as part of its evidence, but the reported
alternatives are not checked.
"""

from __future__ import annotations

from typing import Any

from hivemesh.protocol import wire
from hivemesh.router.domain import Outcome
from hivemesh.router.runner import TaskRun
from hivemesh.router.token_run import Run


def answers_of(run: Run) -> list[dict[str, Any]]:
    """Every miner that took part, with its answer (generators) or its check (verifiers) and how it ended."""
    final = run.final
    if isinstance(run, TaskRun):
        consensus = set(final.consensus) if final is not None else set()
        out = []
        for node, slot in run.slots.items():
            c = slot.commit
            verdict = "consensus" if node in consensus else ("dissent" if c is not None else slot.status)
            out.append({"node": node, "role": "generator", **_answer(c), "verdict": verdict})
        return out
    out = []
    machine = run.machine
    for i, g in enumerate(machine.generators):
        judged = [ch.verdict for ch in machine.checks if ch.attempt == i and ch.verdict is not None]
        if g.status == "rejected":
            verdict = "rejected"
        elif judged and all(v.accepted for v in judged):
            verdict = "verified"
        else:
            verdict = "unverified" if g.commit is not None else g.status
        out.append({"node": g.node, "role": "generator", **_answer(g.commit), "verdict": verdict})
    for ch in machine.checks:
        v = ch.verdict
        out.append(
            {
                "node": ch.node,
                "role": "verifier",
                "checked": machine.generators[ch.attempt].node
                if ch.attempt < len(machine.generators)
                else None,
                "round": ch.round,
                "verdict": ("accepted" if v.accepted else f"rejected: {v.reason}")
                if v is not None
                else ch.status,
            }
        )
    return out


def logprobs_of(run: Run, outcome: Outcome) -> list[dict[str, Any]]:
    """The answer's per-token logprobs in OpenAI's chat shape (``choices[].logprobs.content``)."""
    commit = _answer_commit(run, outcome)
    if commit is None:
        return []
    return [
        {
            **_entry(lp.token, lp.logprob),
            "top_logprobs": [_entry(t.token, t.logprob) for t in lp.top],
        }
        for lp in commit.logprobs
    ]


def _answer_commit(run: Run, outcome: Outcome) -> wire.Commit | None:
    node = outcome.answered_by
    if isinstance(run, TaskRun):
        slot = run.slots.get(node)
        commits = [slot.commit] if slot is not None else []
    else:
        commits = [g.commit for g in reversed(run.machine.generators) if g.node == node]
    return next((c for c in commits if c is not None and c.output == outcome.text), None)


def _answer(c: wire.Commit | None) -> dict[str, Any]:
    if c is None:
        return {"text": None, "finish_reason": None}
    return {"text": c.output, "finish_reason": c.finish_reason}


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
