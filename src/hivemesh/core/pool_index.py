"""The eligible nodes for one kind of task, kept ready to draw from: the seeded weighted shuffle in O(k log n).

``rank()`` (core/selection.py) orders every eligible node for every task: O(n log n), 617 ms at 100,000 nodes.
``PoolIndex`` holds the same nodes with the same weights (``selection.weight``) in a persistent treap, updated as
a node's score or free capacity changes (``put``/``discard``, O(log n)). ``snapshot()`` freezes the state in O(1)
and ``snapshot().draw(seed)`` yields the shuffle lazily: each node costs one O(log n) descent, so the first k
cost O(k log n) and replacements are drawn only when a miner fails, from the same frozen snapshot.

Same distribution as ``rank``. Efraimidis-Spirakis keys order the nodes as successive weighted draws without
replacement do (each node first with chance ``w / sum(w)`` of those left); the draw makes those draws directly.
Exploration (``rank``'s step 4: with chance ``explore_share`` the best-ranked new node moves to the front) is
drawn exactly too. Read ES keys as exponential clocks ``E = -log(u) / w`` (lowest first): the first new node ``X``
is new node ``j`` with chance ``w_j / W_new`` and rings at ``T ~ Exp(W_new)``, independent of which one. ``X`` goes
first; the old nodes follow in their own race until time ``T``; from ``T`` on, the other new nodes race too
(memoryless, so nothing else about them is known).

Replayable. The treap's shape is a function of the set of node ids (priorities are a hash of the id) and every
subtree sum is recomputed from its children, so a draw depends only on the seed and the set of (node, weight,
new) entries, never on the order of the updates that built it. ``replay()`` rebuilds it from a claimed eligible
set, checks the set against the recorded ``digest`` and returns the draw's prefix: ``DrawAudit`` is what a task
record needs to keep instead of every eligible node.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hivemesh.core.selection import Candidate, weight
from hivemesh.protocol.wire import NodeId

__all__ = ["ALGORITHM", "Draw", "DrawAudit", "PoolIndex", "PoolSnapshot", "replay"]

ALGORITHM: Final = "pool-index/1"
"""Names this draw procedure in audit records; a change to it that changes draws is a new name."""

_MOD: Final = 1 << 256


class _T:
    """One treap node. Never changed after construction: updates copy the path from the root."""

    __slots__ = ("key", "left", "prio", "right", "total", "w")
    key: str
    prio: int
    w: float
    left: _T | None
    right: _T | None
    total: float

    def __init__(self, key: str, prio: int, w: float, left: _T | None, right: _T | None) -> None:
        self.key = key
        self.prio = prio
        self.w = w
        self.left = left
        self.right = right
        self.total = (left.total if left else 0.0) + w + (right.total if right else 0.0)


def _prio(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest())


def _split(t: _T | None, key: str) -> tuple[_T | None, _T | None]:
    """(keys < key, keys > key); ``key`` itself must not be in ``t``."""
    if t is None:
        return None, None
    if t.key < key:
        a, b = _split(t.right, key)
        return _T(t.key, t.prio, t.w, t.left, a), b
    a, b = _split(t.left, key)
    return a, _T(t.key, t.prio, t.w, b, t.right)


def _merge(a: _T | None, b: _T | None) -> _T | None:
    """Every key of ``a`` is below every key of ``b``."""
    if a is None:
        return b
    if b is None:
        return a
    if a.prio > b.prio:
        return _T(a.key, a.prio, a.w, a.left, _merge(a.right, b))
    return _T(b.key, b.prio, b.w, _merge(a, b.left), b.right)


def _set(t: _T | None, key: str, w: float) -> _T:
    """``t`` with ``key`` at weight ``w``: a path copy if present, else an insert."""
    path: list[_T] = []
    n = t
    while n is not None and n.key != key:
        path.append(n)
        n = n.left if key < n.key else n.right
    if n is None:
        a, b = _split(t, key)
        out = _merge(_merge(a, _T(key, _prio(key), w, None, None)), b)
        assert out is not None
        return out
    cur = _T(key, n.prio, w, n.left, n.right)
    for p in reversed(path):
        cur = _T(p.key, p.prio, p.w, cur, p.right) if key < p.key else _T(p.key, p.prio, p.w, p.left, cur)
    return cur


def _delete(t: _T | None, key: str) -> _T | None:
    if t is None:
        return None
    if t.key == key:
        return _merge(t.left, t.right)
    if key < t.key:
        return _T(t.key, t.prio, t.w, _delete(t.left, key), t.right)
    return _T(t.key, t.prio, t.w, t.left, _delete(t.right, key))


def _build(items: Sequence[tuple[str, float]]) -> _T | None:
    """The treap of ``items`` (sorted by key, distinct) in O(n): a Cartesian tree built on a stack."""
    stack: list[list[Any]] = []  # [key, prio, w, left, right], children still mutable
    for key, w in items:
        node: list[Any] = [key, _prio(key), w, None, None]
        last = None
        while stack and stack[-1][1] < node[1]:
            last = stack.pop()
        node[3] = last
        if stack:
            stack[-1][4] = node
        stack.append(node)

    def freeze(n: list[Any] | None) -> _T | None:
        return None if n is None else _T(n[0], n[1], n[2], freeze(n[3]), freeze(n[4]))

    return freeze(stack[0]) if stack else None


def _pick(t: _T, target: float) -> str:
    """The node at ``target`` in [0, t.total) of the weights laid end to end in key order."""
    while True:
        lt = t.left.total if t.left is not None else 0.0
        if target < lt:
            assert t.left is not None
            t = t.left
            continue
        target -= lt
        if target < t.w:
            return t.key
        target -= t.w
        if t.right is None or t.right.total <= 0.0:  # rounding ran past the end: the last positive weight
            return _last(t)
        t = t.right


def _last(t: _T) -> str:
    while True:
        if t.right is not None and t.right.total > 0.0:
            t = t.right
        elif t.w > 0.0:
            return t.key
        else:
            assert t.left is not None
            t = t.left


def _entry_hash(node: str, w: float, new: bool) -> int:
    raw = f"{node}|{w.hex()}|{int(new)}".encode()
    return int.from_bytes(hashlib.sha256(raw).digest())


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The index frozen at one moment: what a task draws from, however the index changes afterwards."""

    old: _T | None
    new: _T | None
    size: int
    digest: str  # an order-free hash of every (node, weight, new) entry: what the audit checks a set against

    def draw(self, seed: int, *, explore_share: float = 0.15) -> Draw:
        return Draw(self, seed, explore_share)


class Draw(Iterator[NodeId]):
    """The seeded shuffle of one snapshot, best first, drawn as it is read; ``taken`` lists what was read."""

    def __init__(self, snap: PoolSnapshot, seed: int, explore_share: float = 0.15) -> None:
        if not 0.0 <= explore_share <= 1.0:
            raise ValueError(f"explore_share must be in [0, 1], got {explore_share!r}")
        self.snapshot = snap
        self.seed = seed
        self.taken: list[NodeId] = []
        self._rng = random.Random(seed)
        self._old, self._new = snap.old, snap.new
        self._explore = self._rng.random() < explore_share and self._new is not None and self._new.total > 0
        self._t = 0.0
        self._ring = 0.0  # explore: when the new nodes join the race

    def __next__(self) -> NodeId:
        node = self._next()
        if node is None:
            raise StopIteration
        self.taken.append(NodeId(node))
        return NodeId(node)

    def take(self, k: int) -> list[NodeId]:
        """Up to ``k`` more nodes (fewer when the snapshot runs out)."""
        out: list[NodeId] = []
        for node in self:
            out.append(node)
            if len(out) >= k:
                break
        return out

    def audit(self) -> DrawAudit:
        return DrawAudit(ALGORITHM, self.seed, self.snapshot.size, self.snapshot.digest, tuple(self.taken))

    def _next(self) -> str | None:
        rng = self._rng
        old_w = self._old.total if self._old is not None else 0.0
        new_w = self._new.total if self._new is not None else 0.0
        if self._explore:
            if not self.taken:  # the first new node to ring, and when it rings
                assert self._new is not None
                self._ring = rng.expovariate(new_w)
                return self._take_new(_pick(self._new, rng.random() * new_w))
            if self._old is not None and old_w > 0.0:
                self._t += rng.expovariate(old_w)
                if self._t < self._ring:  # an old node rings before the new ones join
                    return self._take_old(_pick(self._old, rng.random() * old_w))
            self._explore = False  # from here on every node left races
        total = old_w + new_w
        if total <= 0.0:
            return None
        u = rng.random() * total
        if u < old_w or new_w <= 0.0:
            assert self._old is not None
            return self._take_old(_pick(self._old, u))
        assert self._new is not None
        return self._take_new(_pick(self._new, u - old_w))

    def _take_old(self, key: str) -> str:
        self._old = _set(self._old, key, 0.0)
        return key

    def _take_new(self, key: str) -> str:
        self._new = _set(self._new, key, 0.0)
        return key


class PoolIndex:
    """The nodes eligible for one kind of task (one model, pool, level, ...), by weight; pure, no I/O.

    ``put`` a node whenever its score, free capacity, capacity or record changes; ``discard`` it when it leaves
    (or stops being eligible). A node with no free slot (weight 0) is kept out, as ``rank`` leaves it out.
    """

    def __init__(self, candidates: Iterable[Candidate] = (), *, new_node_record: int = 10) -> None:
        self.new_node_record = new_node_record
        self._entries: dict[str, tuple[float, bool]] = {}
        self._digest = 0
        for c in candidates:
            w = weight(c)
            if w > 0.0:
                if c.node in self._entries:
                    raise ValueError(f"node {c.node} is listed twice")
                self._entries[c.node] = (w, c.record < new_node_record)
                self._digest = (self._digest + _entry_hash(c.node, w, c.record < new_node_record)) % _MOD
        ordered = sorted(self._entries.items())
        self._old = _build([(k, w) for k, (w, new) in ordered if not new])
        self._new = _build([(k, w) for k, (w, new) in ordered if new])

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node: object) -> bool:
        return node in self._entries

    def put(self, c: Candidate) -> None:
        w, new = weight(c), c.record < self.new_node_record
        if w <= 0.0:
            self.discard(c.node)
            return
        was = self._entries.get(c.node)
        if was == (w, new):
            return
        if was is not None:
            self._digest -= _entry_hash(c.node, *was)
            if was[1] != new:
                self._old, self._new = (
                    (self._old, _delete(self._new, c.node))
                    if was[1]
                    else (_delete(self._old, c.node), self._new)
                )
        if new:
            self._new = _set(self._new, c.node, w)
        else:
            self._old = _set(self._old, c.node, w)
        self._entries[c.node] = (w, new)
        self._digest = (self._digest + _entry_hash(c.node, w, new)) % _MOD

    def discard(self, node: str) -> None:
        was = self._entries.pop(node, None)
        if was is None:
            return
        self._digest = (self._digest - _entry_hash(node, *was)) % _MOD
        if was[1]:
            self._new = _delete(self._new, node)
        else:
            self._old = _delete(self._old, node)

    def weight(self, node: str) -> float:
        """The node's weight in the index (0 when it is not in it)."""
        return self._entries.get(node, (0.0, False))[0]

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(self._old, self._new, len(self._entries), f"{self._digest % _MOD:064x}")

    def draw(self, seed: int, *, explore_share: float = 0.15) -> Draw:
        """The seeded shuffle of the nodes as they are now (a snapshot: later updates do not reach it)."""
        return self.snapshot().draw(seed, explore_share=explore_share)


@dataclass(frozen=True, slots=True)
class DrawAudit:
    """What a task record keeps of its draw: enough to replay it from the eligible set, and to check that set."""

    algorithm: str
    seed: int
    eligible: int  # how many nodes the snapshot held
    digest: str  # PoolSnapshot.digest
    taken: tuple[NodeId, ...]  # the shuffle's prefix the task read: first k, then replacements, in order

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "seed": self.seed,
            "eligible": self.eligible,
            "digest": self.digest,
            "taken": list(self.taken),
        }


def replay(
    audit: DrawAudit,
    eligible: Iterable[Candidate],
    *,
    explore_share: float = 0.15,
    new_node_record: int = 10,
) -> bool:
    """Whether ``eligible`` is the set the audited draw was made from and gives the same prefix from its seed."""
    if audit.algorithm != ALGORITHM:
        raise ValueError(f"cannot replay a {audit.algorithm!r} draw")
    snap = PoolIndex(eligible, new_node_record=new_node_record).snapshot()
    if snap.digest != audit.digest or snap.size != audit.eligible:
        return False
    return tuple(snap.draw(audit.seed, explore_share=explore_share).take(len(audit.taken))) == audit.taken
