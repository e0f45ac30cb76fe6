"""NodeUtils shuffle: which miners get a task, and who replaces them.

``rank(candidates, seed)`` orders every eligible candidate; the session queue gives the task to the first k and
takes replacements from the rest, in order, when a miner misses a deadline.

Rule, for one seed:

1. Eligible: ``free >= 1`` (a node with no free slot is left out). Candidates are sorted by node id first, so the
   result depends on the seed and the *set* of candidates, never on the order the caller listed them in.
2. Weight: ``w = (SCORE_FLOOR + score) * min(free, capacity) / capacity`` with ``SCORE_FLOOR = 0.05``. A node with a
   score of 0 and every slot free still gets ``0.05 / 1.05`` (about 1/21) of the pull of a perfect node, so it can
   earn its way back; a half-busy node pulls half as hard as the same node idle.
3. Weighted sampling without replacement (Efraimidis-Spirakis): each node draws ``u`` uniform in (0, 1] from
   ``random.Random(seed)`` and gets the key ``u ** (1 / w)``; nodes are ranked by key, highest first. Keys are
   compared as ``log(u) / w``, the same order without underflow for tiny weights. The chance that a node comes
   first is ``w / sum(w)``.
4. Exploration: a node with ``record < new_node_record`` is *new*. With probability ``explore_share`` (one more
   seeded draw, taken before the keys) the best-ranked new node is moved to the front, so new nodes get at least
   about ``explore_share`` of first places however low their score, and a track record to be scored on.

``draw_seed()`` gives a fresh 63-bit seed from ``secrets``; record it with the task so the shuffle can be replayed.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hivemesh.protocol.wire import NodeId

__all__ = ["SCORE_FLOOR", "Candidate", "draw_seed", "rank", "weight"]

SCORE_FLOOR: Final = 0.05
"""Added to every score before weighting, so a score of 0 still gets a little traffic."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One node the pool offers for a task."""

    node: NodeId
    score: float  # total reputation score in [0, 1]
    free: int  # free capacity slots right now (>= 1 to be eligible)
    capacity: int  # advertised capacity (>= 1)
    record: int  # tasks this node has finished so far (its track record)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:  # also rejects NaN
            raise ValueError(f"score must be in [0, 1], got {self.score!r} for {self.node}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity} for {self.node}")
        if self.record < 0:
            raise ValueError(f"record must be >= 0, got {self.record} for {self.node}")


def weight(c: Candidate) -> float:
    """``(SCORE_FLOOR + score) * min(free, capacity) / capacity``; 0 for a node with no free slot."""
    if c.free < 1:
        return 0.0
    return (SCORE_FLOOR + c.score) * min(c.free, c.capacity) / c.capacity


def rank(
    candidates: Sequence[Candidate],
    seed: int,
    *,
    explore_share: float = 0.15,
    new_node_record: int = 10,
) -> list[NodeId]:
    """Every eligible node, best first: the first k get the task, the rest are replacements in order.

    Raises ``ValueError`` for a node listed twice or an ``explore_share`` outside [0, 1].
    """
    if not 0.0 <= explore_share <= 1.0:
        raise ValueError(f"explore_share must be in [0, 1], got {explore_share!r}")
    ordered = sorted(candidates, key=lambda c: c.node)
    for a, b in itertools.pairwise(ordered):
        if a.node == b.node:
            raise ValueError(f"node {a.node} is listed twice")
    eligible = [c for c in ordered if c.free >= 1]
    if not eligible:
        return []

    rng = random.Random(seed)
    explore = rng.random() < explore_share
    # log(u ** (1/w)) = log(u) / w; u in (0, 1] so log(u) <= 0 and the largest key wins.
    keyed = [(math.log(1.0 - rng.random()) / weight(c), i) for i, c in enumerate(eligible)]
    keyed.sort(key=lambda k: (-k[0], k[1]))
    order = [eligible[i] for _, i in keyed]

    if explore:
        first_new = next((i for i, c in enumerate(order) if c.record < new_node_record), None)
        if first_new is not None and first_new > 0:
            order.insert(0, order.pop(first_new))
    return [c.node for c in order]


def draw_seed() -> int:
    """A fresh 63-bit shuffle seed (fits a signed 64-bit database column)."""
    return secrets.randbits(63)
