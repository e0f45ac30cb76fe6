"""The node pool's live indexes: for each kind of task, the eligible nodes kept ready for the seeded draw.

A task asks for nodes of one ``Eligibility`` class: its model, its SLA tier (or none: a network task), whether it
is billed, whether the validators' gate is up, and the role (any node; a generator that reports token ids; a
verifier). The first request for a class builds its index with one scan of the pool; from then on the hub tells
the pool whenever a node changes (join, drop, reserve, release, a new score or level, validation, demotion) and
each class the node's models touch is updated in O(log n). A draw is then O(k log n) (``core.pool_index``), and
"is anyone eligible at all?" is a set size.

Each class keeps two things: ``members``, every eligible node whatever its load (so a task is queued, not refused,
while they are all busy), and ``index``, those with a free slot weighted as ``core.selection.weight`` weighs them.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from hivemesh.core.pool_index import PoolIndex
from hivemesh.core.selection import Candidate
from hivemesh.protocol import wire
from hivemesh.protocol.wire import NodeId

Role = Literal["any", "tokens", "verify"]
FEATURES = ("structured", "logprobs")  # card features a request may need every serving node to have
MAX_CLASSES = 512  # classes kept at once (least recently used dropped): models x tiers x roles in practice


class Member(Protocol):
    """A node as the pool sees it: a local link or another router's (``router.links``)."""

    node: str
    models: frozenset[str]
    cards: tuple[wire.ModelCard, ...]
    capacity: int
    pool: int
    finished: int
    validated: bool
    closed: bool

    @property
    def free(self) -> int: ...


class Judge(Protocol):
    """What the pool asks about a node beyond its link: reputation (``router.reputation.Reputation``)."""

    def total(self, node: str) -> float: ...

    def is_quarantined(self, node: str) -> bool: ...

    def fits(self, node: str, sla: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Eligibility:
    """One kind of task, as far as choosing nodes goes."""

    model: str
    sla: str | None = None  # None: no tier check (an unscored pool)
    network: bool = False  # a validator's task: may reach quarantined and not yet validated nodes
    billed: bool = False  # paid user work: only nodes staked for a pool above 0
    gated: bool = False  # a validator holds the lease: user work needs nodes validated since they joined
    role: Role = "any"


@dataclass(eq=False, slots=True)
class PoolClass:
    key: Eligibility
    members: set[str] = field(default_factory=set)
    index: PoolIndex = field(default_factory=PoolIndex)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def free(self) -> int:
        """Eligible nodes with a free slot now."""
        return len(self.index)


def _card(m: Member, model: str) -> wire.ModelCard | None:
    return next((c for c in m.cards if c.id == model), None)


class NodePool:
    """Every eligible-node class asked for so far, kept current as nodes change. Pure bookkeeping, no I/O."""

    def __init__(
        self,
        members: Callable[[], Iterable[Member]],
        *,
        judge: Callable[[], Judge | None],
        stake_checked: Callable[[], bool],
    ) -> None:
        self._all = members
        self._judge = judge
        self._stake_checked = stake_checked
        self.classes: OrderedDict[Eligibility, PoolClass] = OrderedDict()
        self._by_model: dict[str, set[Eligibility]] = {}
        self.model_counts: dict[str, int] = {}  # nodes serving each model, eligible or not
        self.cards: dict[str, wire.ModelCard] = {}  # a card of each model served (the first node's)
        self._contexts: dict[str, Counter[int]] = {}  # model -> its cards' context lengths (how many of each)
        self._features: dict[tuple[str, str], int] = {}  # (model, feature) -> cards that have it
        self.synced_at = time.monotonic()

    # ------------------------------------------------------------------ questions

    def get(self, key: Eligibility) -> PoolClass:
        """The class for ``key``, built with one scan of the pool the first time it is asked for."""
        cls = self.classes.get(key)
        if cls is not None:
            self.classes.move_to_end(key)
            return cls
        cls = PoolClass(key)
        cands = []
        for m in self._all():
            if self.eligible(m, key):
                cls.members.add(m.node)
                cands.append(self.candidate(m))
        cls.index = PoolIndex(cands)
        self.classes[key] = cls
        self._by_model.setdefault(key.model, set()).add(key)
        while len(self.classes) > MAX_CLASSES:
            old, _ = self.classes.popitem(last=False)
            self._by_model.get(old.model, set()).discard(old)
        return cls

    def max_context(self, model: str) -> int:
        """The longest context any node serving ``model`` advertises (0: none serves it). O(distinct lengths)."""
        return max(self._contexts.get(model) or (0,))

    def all_have(self, model: str, feature: str) -> bool:
        """Whether every node serving ``model`` advertises ``feature`` on its card (and some node serves it)."""
        n = self.model_counts.get(model, 0)
        return n > 0 and self._features.get((model, feature), 0) >= n

    def serves(self, model: str) -> int:
        """How many nodes serve ``model`` (O(1))."""
        return self.model_counts.get(model, 0)

    def eligible(self, m: Member, key: Eligibility) -> bool:
        if m.closed or key.model not in m.models:
            return False
        if key.role != "any":
            card = _card(m, key.model)
            if card is None or not (card.tokens if key.role == "tokens" else card.verify):
                return False
        if key.billed and not key.network and self._stake_checked() and m.pool <= 0:
            return False
        rep = self._judge()
        if key.sla is None or rep is None:
            return True
        if key.gated and not key.network and not m.validated:
            return False
        if not key.network and rep.is_quarantined(m.node):
            return False
        return rep.fits(m.node, key.sla)

    def candidate(self, m: Member) -> Candidate:
        rep = self._judge()
        score = rep.total(m.node) if rep is not None else 0.5
        return Candidate(
            node=NodeId(m.node),
            score=min(1.0, max(0.0, score)),
            free=max(m.free, 0),
            capacity=max(m.capacity, 1),
            record=max(m.finished, 0),
        )

    # ------------------------------------------------------------------ changes

    def joined(self, m: Member) -> None:
        for model in m.models:
            self.model_counts[model] = self.model_counts.get(model, 0) + 1
        for card in m.cards:
            self.cards.setdefault(card.id, card)
            self._contexts.setdefault(card.id, Counter())[card.context_length] += 1
            for feature in FEATURES:
                if getattr(card, feature, False):
                    self._features[(card.id, feature)] = self._features.get((card.id, feature), 0) + 1
        self.update(m)

    def left(self, m: Member) -> None:
        for card in m.cards:
            if (ctx := self._contexts.get(card.id)) is not None:
                ctx[card.context_length] -= 1
                if ctx[card.context_length] <= 0:
                    del ctx[card.context_length]
            for feature in FEATURES:
                if getattr(card, feature, False):
                    self._features[(card.id, feature)] = self._features.get((card.id, feature), 1) - 1
        for model in m.models:
            left = self.model_counts.get(model, 0) - 1
            if left > 0:
                self.model_counts[model] = left
            else:
                self.model_counts.pop(model, None)
                self.cards.pop(model, None)
        for model in m.models:
            for key in self._by_model.get(model, ()):
                cls = self.classes[key]
                cls.members.discard(m.node)
                cls.index.discard(m.node)

    def update(self, m: Member) -> None:
        """Bring every class ``m``'s models touch up to date with ``m`` as it is now (O(classes * log n))."""
        cand: Candidate | None = None
        for model in m.models:
            for key in self._by_model.get(model, ()):
                cls = self.classes[key]
                if self.eligible(m, key):
                    cls.members.add(m.node)
                    cand = cand or self.candidate(m)
                    cls.index.put(cand)
                else:
                    cls.members.discard(m.node)
                    cls.index.discard(m.node)

    def resync(self, members: Iterable[Member]) -> None:
        """Re-judge every node (a score's rolling window moves on, a validator's verdict): cheap where nothing
        changed, since an unchanged entry is not touched."""
        for m in members:
            self.update(m)
        self.synced_at = time.monotonic()
