"""Proof-of-Inference agreement: which revealed outputs agree, which one is the answer, who dissents.

``decide(reveals, mode=..., quorum=m)`` groups the reveals of one task and picks the winning group.

Modes:

* ``none``: nothing is compared. Verdict ``unverified``, answer 0, every node in ``consensus``, no groups,
  ``score = similarity = 0.0`` (no agreement is claimed).
* ``exact``: reveals are grouped by ``output_digest`` = sha256 of ``normalise(text)`` (NFC, trimmed, runs of
  whitespace collapsed to one space). Every similarity is 1. Groups are ranked by size, ties by the lowest digest,
  so the winner depends only on the multiset of outputs, never on the order reveals arrived in. The medoid of a
  group is its lowest index.
* ``semantic``: ``vectors`` holds one L2-normalised embedding per reveal (n x d). ``sim(i, j)`` is their cosine,
  except that texts equal after ``normalise`` always have similarity 1. Each reveal i proposes the group
  ``{j : sim(i, j) >= threshold}`` (it contains i; identical proposals are merged). A group's medoid is the member
  with the highest summed similarity to the other members (ties: lowest index); its *similarity* is the mean
  similarity of the other members to the medoid (1.0 for a group of one). Groups are ranked by size, then by
  similarity, then by their member indices (the lowest index first).

Verdict (``exact`` and ``semantic``): the first-ranked group wins. If its size is at least ``quorum`` the task is
``verified``; otherwise it is ``disputed`` and ``answer`` is still that group's medoid (the best answer there is).
``score = |winning group| / n`` for n reveals; ``consensus`` is the winning group and ``dissent`` everyone else,
both in reveal order. Groups may overlap in ``semantic`` mode; only the winning group counts.

Raises ``ValueError`` for no reveals, a node that revealed twice (it would count twice toward quorum),
``quorum < 1``, a threshold outside [0, 1], or missing, misshapen, non-finite or unnormalised vectors.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from hivemesh.protocol.wire import NodeId

__all__ = ["Decision", "Mode", "Reveal", "Verdict", "decide", "normalise", "output_digest"]

Mode = Literal["exact", "semantic", "none"]
Verdict = Literal["verified", "disputed", "unverified"]

_NORM_TOLERANCE: Final = 1e-3
_ROUND: Final = 9  # similarities are compared at this many decimals, so float noise never decides a tie


@dataclass(frozen=True, slots=True)
class Reveal:
    """One miner's revealed output for a task (already checked against its precommit)."""

    node: NodeId
    output: str


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    answer: int  # index into reveals of the chosen answer (the winning group's medoid)
    consensus: tuple[NodeId, ...]  # nodes in the winning group, in reveal order
    dissent: tuple[NodeId, ...]  # all the other nodes, in reveal order
    score: float  # |winning group| / n, in [0, 1]; 0.0 in mode "none"
    similarity: float  # mean similarity of the group to its medoid (1.0 for exact); 0.0 in mode "none"
    groups: tuple[tuple[int, ...], ...]  # every group as ascending reveal indices, winner first


def normalise(text: str) -> str:
    """NFC, strip, and collapse every run of whitespace (newlines included) to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def output_digest(text: str) -> str:
    """sha256 hex of ``normalise(text)`` encoded as UTF-8."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Group:
    members: tuple[int, ...]
    medoid: int
    similarity: float


def decide(
    reveals: Sequence[Reveal],
    *,
    mode: Mode,
    quorum: int,
    threshold: float = 0.85,
    vectors: npt.NDArray[np.floating] | None = None,
) -> Decision:
    """Group the reveals of one task and pick the answer; see the module docstring for the rule."""
    n = len(reveals)
    if n == 0:
        raise ValueError("no reveals to decide on")
    if quorum < 1:
        raise ValueError(f"quorum must be >= 1, got {quorum}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    nodes = [r.node for r in reveals]
    if len(set(nodes)) != n:
        raise ValueError("a node revealed more than once")

    if mode == "none":
        return Decision("unverified", 0, tuple(nodes), (), 0.0, 0.0, ())
    if mode == "exact":
        ranked = _exact_groups(reveals)
    elif mode == "semantic":
        ranked = _semantic_groups(reveals, _checked(vectors, n), threshold)
    else:
        raise ValueError(f"unknown validation mode {mode!r}")

    win = ranked[0]
    inside = set(win.members)
    return Decision(
        verdict="verified" if len(win.members) >= quorum else "disputed",
        answer=win.medoid,
        consensus=tuple(nodes[i] for i in win.members),
        dissent=tuple(nodes[i] for i in range(n) if i not in inside),
        score=len(win.members) / n,
        similarity=win.similarity,
        groups=tuple(g.members for g in ranked),
    )


def _exact_groups(reveals: Sequence[Reveal]) -> list[_Group]:
    by_digest: dict[str, list[int]] = {}
    for i, r in enumerate(reveals):
        by_digest.setdefault(output_digest(r.output), []).append(i)
    ranked = sorted(by_digest.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [_Group(tuple(members), members[0], 1.0) for _, members in ranked]


def _checked(vectors: npt.NDArray[np.floating] | None, n: int) -> npt.NDArray[np.float64]:
    if vectors is None:
        raise ValueError("semantic mode needs one embedding vector per reveal")
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] != n or v.shape[1] == 0:
        raise ValueError(f"vectors must have shape ({n}, d), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("vectors must be finite")
    if not np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=_NORM_TOLERANCE):
        raise ValueError("vector rows must be L2-normalised")
    return v


def _semantic_groups(reveals: Sequence[Reveal], v: npt.NDArray[np.float64], threshold: float) -> list[_Group]:
    n = len(reveals)
    sim = np.clip(v @ v.T, -1.0, 1.0)
    keys = [output_digest(r.output) for r in reveals]
    for i in range(n):
        for j in range(n):
            if keys[i] == keys[j]:
                sim[i, j] = 1.0

    proposals = {tuple(int(j) for j in np.flatnonzero(sim[i] >= threshold)) for i in range(n)}
    groups = [_medoid(members, sim) for members in proposals]
    groups.sort(key=lambda g: (-len(g.members), -round(g.similarity, _ROUND), g.members))
    return groups


def _medoid(members: tuple[int, ...], sim: npt.NDArray[np.float64]) -> _Group:
    if len(members) == 1:
        return _Group(members, members[0], 1.0)
    idx = np.array(members)
    block = sim[np.ix_(idx, idx)]
    sums = block.sum(axis=1) - 1.0  # to the *other* members; the diagonal is 1
    best = max(range(len(members)), key=lambda k: (round(float(sums[k]), _ROUND), -k))
    return _Group(members, members[best], float(sums[best]) / (len(members) - 1))
