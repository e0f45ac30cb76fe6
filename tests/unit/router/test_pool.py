"""The node pool's indexes follow the nodes: eligibility per class, free capacity, and a draw that matches a
fresh index built from the same nodes (so the recorded audit replays)."""

from __future__ import annotations

from dataclasses import dataclass

from hivemesh.core.pool_index import replay
from hivemesh.protocol import wire
from hivemesh.router.pool import Eligibility, NodePool


@dataclass
class Node:
    node: str
    models: frozenset[str]
    cards: tuple[wire.ModelCard, ...]
    capacity: int = 2
    pool: int = 1
    finished: int = 20
    validated: bool = True
    closed: bool = False
    inflight: int = 0

    @property
    def free(self) -> int:
        return self.capacity - self.inflight


class Judge:
    def __init__(self) -> None:
        self.quarantined: set[str] = set()
        self.scores: dict[str, float] = {}

    def total(self, node: str) -> float:
        return self.scores.get(node, 0.5)

    def is_quarantined(self, node: str) -> bool:
        return node in self.quarantined

    def fits(self, node: str, sla: str) -> bool:
        return True


def _node(i: int, *, tokens: bool = True, verify: bool = True, model: str = "m") -> Node:
    card = wire.ModelCard(id=model, engine="test", context_length=512, tokens=tokens, verify=verify)
    return Node(f"0x{i:040x}", frozenset({model}), (card,))


def _pool(nodes: list[Node], judge: Judge | None = None) -> NodePool:
    j = judge or Judge()
    pool = NodePool(lambda: nodes, judge=lambda: j, stake_checked=lambda: True)
    for n in nodes:
        pool.joined(n)
    return pool


def test_classes_judge_role_stake_quarantine_and_validation() -> None:
    nodes = [_node(1), _node(2, tokens=False), _node(3, verify=False), _node(4)]
    nodes[3].pool = 0
    judge = Judge()
    judge.quarantined.add(nodes[0].node)
    nodes[1].validated = False
    pool = _pool(nodes, judge)
    assert pool.serves("m") == 4 and pool.serves("other") == 0
    every = pool.get(Eligibility("m"))
    assert every.members == {n.node for n in nodes}
    billed = pool.get(Eligibility("m", billed=True))
    assert nodes[3].node not in billed.members
    user = pool.get(Eligibility("m", sla="low"))
    assert user.members == {n.node for n in nodes[1:]}  # the quarantined node is out
    network = pool.get(Eligibility("m", sla="low", network=True))
    assert nodes[0].node in network.members
    gated = pool.get(Eligibility("m", sla="low", gated=True))
    assert nodes[1].node not in gated.members  # not validated since it joined
    assert pool.get(Eligibility("m", role="tokens")).members == {nodes[0].node, nodes[2].node, nodes[3].node}
    assert pool.get(Eligibility("m", role="verify")).members == {nodes[0].node, nodes[1].node, nodes[3].node}


def test_updates_follow_capacity_and_departures() -> None:
    nodes = [_node(i) for i in range(5)]
    pool = _pool(nodes)
    cls = pool.get(Eligibility("m"))
    assert cls.free == 5
    nodes[0].inflight = 2  # full: still a member (the task queues), not drawable
    pool.update(nodes[0])
    assert len(cls) == 5 and cls.free == 4 and nodes[0].node not in cls.index
    nodes[1].inflight = 1  # half busy: drawn with half the weight
    pool.update(nodes[1])
    assert cls.index.weight(nodes[1].node) == cls.index.weight(nodes[2].node) / 2
    nodes[2].closed = True
    pool.left(nodes[2])
    assert nodes[2].node not in cls.members and pool.serves("m") == 4
    # a class asked for later is built from the pool as it is now, and agrees with the live one
    assert pool.get(Eligibility("m", sla="low")).index.snapshot().digest == cls.index.snapshot().digest


def test_draw_replays_from_the_audit() -> None:
    nodes = [_node(i) for i in range(50)]
    judge = Judge()
    judge.scores = {n.node: (i % 10) / 10 for i, n in enumerate(nodes)}
    pool = _pool(nodes, judge)
    cls = pool.get(Eligibility("m"))
    draw = cls.index.draw(1234)
    first = draw.take(3)
    assert len(set(first)) == 3
    audit = draw.audit()
    cands = [pool.candidate(n) for n in nodes]
    assert replay(audit, cands)
    nodes[7].inflight = 1  # the set changed: the audit names another set
    assert not replay(audit, [pool.candidate(n) for n in nodes])
