"""The pool index: the shuffle ``rank`` draws, kept live and drawn in O(k log n), replayable from its seed."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hivemesh.core.pool_index import DrawAudit, PoolIndex, replay
from hivemesh.core.selection import Candidate, rank, weight
from hivemesh.protocol.wire import NodeId


def cand(node: str, score: float = 0.8, free: int = 1, capacity: int = 1, record: int = 100) -> Candidate:
    return Candidate(NodeId(node), score, free, capacity, record)


POOL = [
    cand("0xa", 0.9),
    cand("0xb", 0.5, 2, 4),
    cand("0xc", 0.1),
    cand("0xd", 0.7, record=0),  # new
    cand("0xe", 0.0),
    cand("0xf", 0.3, record=3),  # new
    cand("0x1", 0.95, 3, 3),
]


T = TypeVar("T")


def _chi2_critical(df: int, z: float = 3.29) -> float:
    """Wilson-Hilferty: the chi-square quantile at the normal quantile ``z`` (3.29: one in 2,000 by chance)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _same_distribution(a: Counter[T], b: Counter[T]) -> None:
    """Chi-square test of homogeneity between two samples of equal size."""
    cells = set(a) | set(b)
    stat = sum((a[c] - b[c]) ** 2 / (a[c] + b[c]) for c in cells)
    assert stat < _chi2_critical(len(cells) - 1), (stat, sorted(a.items()), sorted(b.items()))


@pytest.mark.parametrize("explore_share", [0.0, 0.15, 0.6, 1.0])
def test_first_places_follow_rank(explore_share: float) -> None:
    n = 12_000
    idx = PoolIndex(POOL)
    ours = Counter(idx.draw(s, explore_share=explore_share).take(1)[0] for s in range(n))
    theirs = Counter(rank(POOL, 10**9 + s, explore_share=explore_share)[0] for s in range(n))
    _same_distribution(ours, theirs)


def test_first_places_match_the_rule() -> None:
    """First place: ``w / sum(w)``, and with chance ``explore_share`` a new node by ``w / sum(w of new)``."""
    n, share = 20_000, 0.15
    idx = PoolIndex(POOL)
    got = Counter(idx.draw(s, explore_share=share).take(1)[0] for s in range(n))
    total = sum(weight(c) for c in POOL)
    new_total = sum(weight(c) for c in POOL if c.record < 10)
    for c in POOL:
        p = (1 - share) * weight(c) / total + (share * weight(c) / new_total if c.record < 10 else 0.0)
        assert abs(got[c.node] - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), c.node


@pytest.mark.parametrize("explore_share", [0.15, 0.7])
def test_first_two_places_follow_rank(explore_share: float) -> None:
    """The whole order, not just its head: the (first, second) pairs have rank's distribution too."""
    n = 20_000
    idx = PoolIndex(POOL)
    ours = Counter(tuple(idx.draw(s, explore_share=explore_share).take(2)) for s in range(n))
    theirs = Counter(tuple(rank(POOL, 10**9 + s, explore_share=explore_share)[:2]) for s in range(n))
    _same_distribution(ours, theirs)


def test_third_place_follows_rank_when_new_nodes_join_late() -> None:
    """Many old nodes, one light new node: in explore draws the other new node enters the race late."""
    pool = [cand(f"0x{i:02x}", 0.9) for i in range(4)] + [
        cand("0xn1", 0.0, record=0),
        cand("0xn2", 0.9, record=0),
    ]
    n = 20_000
    idx = PoolIndex(pool)
    ours = Counter(idx.draw(s, explore_share=1.0).take(3)[2] for s in range(n))
    theirs = Counter(rank(pool, 10**9 + s, explore_share=1.0)[2] for s in range(n))
    _same_distribution(ours, theirs)


def test_draw_yields_every_node_once() -> None:
    idx = PoolIndex(POOL)
    for s in range(50):
        out = list(idx.draw(s))
        assert sorted(out) == sorted(c.node for c in POOL)


def test_same_seed_same_snapshot_same_draw() -> None:
    idx = PoolIndex(POOL)
    assert list(idx.draw(42)) == list(idx.draw(42))
    assert len({tuple(idx.draw(s)) for s in range(50)}) > 5


def test_a_draw_reads_its_snapshot_not_later_updates() -> None:
    idx = PoolIndex(POOL)
    draw = idx.draw(7)
    first = next(draw)
    for c in POOL:
        idx.discard(c.node)
    rest = list(draw)
    assert [first, *rest] == list(PoolIndex(POOL).draw(7))


def test_history_does_not_matter_only_the_set() -> None:
    built = PoolIndex(POOL)
    grown = PoolIndex()
    for c in reversed(POOL):
        grown.put(cand(c.node, 0.01, record=0))  # another weight, another class first
    grown.put(cand("0xgone"))
    grown.discard("0xgone")
    for c in POOL:
        grown.put(c)
    assert grown.snapshot().digest == built.snapshot().digest
    for s in range(30):
        assert list(grown.draw(s)) == list(built.draw(s))


def test_nodes_without_a_free_slot_are_left_out() -> None:
    idx = PoolIndex([*POOL, cand("0xfull", free=0)])
    assert "0xfull" not in idx and len(idx) == len(POOL)
    idx.put(cand("0xa", free=0))
    assert "0xa" not in idx
    assert "0xa" not in list(idx.draw(1))


def test_put_follows_score_and_capacity() -> None:
    idx = PoolIndex([cand("0xa", 1.0), cand("0xb", 1.0)])
    idx.put(cand("0xb", 0.0))
    wins = Counter(idx.draw(s, explore_share=0.0).take(1)[0] for s in range(4000))
    assert wins[NodeId("0xa")] > 0.9 * 4000  # 1.05 against 0.05
    assert idx.weight("0xb") == pytest.approx(0.05)


def test_a_node_graduates_from_new_to_old() -> None:
    idx = PoolIndex([cand("0xa", 1.0), cand("0xb", 0.0, record=0)])
    always_new = Counter(idx.draw(s, explore_share=1.0).take(1)[0] for s in range(200))
    assert always_new == {"0xb": 200}
    idx.put(cand("0xb", 0.0, record=10))
    assert Counter(idx.draw(s, explore_share=1.0).take(1)[0] for s in range(200))[NodeId("0xa")] > 150


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="twice"):
        PoolIndex([cand("0xa"), cand("0xa")])
    with pytest.raises(ValueError, match="explore_share"):
        PoolIndex(POOL).draw(1, explore_share=1.5)


def test_empty_index_draws_nothing() -> None:
    assert list(PoolIndex().draw(1)) == []
    assert PoolIndex().draw(1).take(3) == []


def test_audit_replays_from_the_eligible_set() -> None:
    draw = PoolIndex(POOL).draw(99)
    draw.take(3)
    next(draw)  # a replacement
    audit = draw.audit()
    assert len(audit.taken) == 4 and audit.eligible == len(POOL) and audit.seed == 99
    assert replay(audit, reversed(POOL))
    assert not replay(audit, POOL[1:])  # another set: the digest says so
    assert not replay(audit, [*POOL[:-1], cand("0x1", 0.5, 3, 3)])  # another weight
    forged = DrawAudit(audit.algorithm, audit.seed, audit.eligible, audit.digest, audit.taken[::-1])
    assert not replay(forged, POOL)
    assert audit.to_json()["taken"] == list(audit.taken)


def test_audit_is_small() -> None:
    big = [cand(f"0x{i:040x}", (i % 100) / 100) for i in range(10_000)]
    draw = PoolIndex(big).draw(5)
    draw.take(3)
    assert len(str(draw.audit().to_json())) < 400


_ops = st.lists(
    st.tuples(
        st.sampled_from([f"0x{i}" for i in range(12)]),
        st.floats(0.0, 1.0),
        st.integers(0, 3),  # free (0: out)
        st.integers(0, 20),  # record
        st.booleans(),  # discard
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, seed=st.integers(0, 2**63 - 1))
def test_any_update_history_equals_building_from_the_final_set(
    ops: list[tuple[str, float, int, int, bool]], seed: int
) -> None:
    idx = PoolIndex()
    final: dict[str, Candidate] = {}
    for node, score, free, record, drop in ops:
        if drop:
            idx.discard(node)
            final.pop(node, None)
        else:
            c = cand(node, score, free, 3, record)
            idx.put(c)
            final[node] = c
    built = PoolIndex(final.values())
    assert idx.snapshot().digest == built.snapshot().digest
    assert len(idx) == len(built) == sum(weight(c) > 0 for c in final.values())
    assert list(idx.draw(seed)) == list(built.draw(seed))
    assert sorted(idx.draw(seed)) == sorted(rank(list(final.values()), seed))


def test_draws_at_scale_read_a_few_nodes() -> None:
    """Sanity at 20,000 nodes: the first three are distinct and drawn without touching the rest."""
    rng = random.Random(3)
    idx = PoolIndex(
        cand(f"0x{i:040x}", rng.random(), rng.randint(1, 4), 4, rng.randint(0, 30)) for i in range(20_000)
    )
    for s in range(100):
        first = idx.draw(s).take(3)
        assert len(set(first)) == 3
