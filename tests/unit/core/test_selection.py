"""NodeUtils shuffle: who gets a task, and who replaces them."""

from __future__ import annotations

import random

import pytest

from hivemesh.core.selection import SCORE_FLOOR, Candidate, draw_seed, rank, weight
from hivemesh.protocol.wire import NodeId


def cand(node: str, score: float = 0.8, free: int = 1, capacity: int = 1, record: int = 100) -> Candidate:
    return Candidate(NodeId(node), score, free, capacity, record)


POOL = [
    cand("0xa", 0.9),
    cand("0xb", 0.5, 2, 4),
    cand("0xc", 0.1),
    cand("0xd", 0.7, record=0),
    cand("0xe", 0.0),
]


def test_empty_input_gives_empty_ranking() -> None:
    assert rank([], seed=1) == []


def test_returns_every_eligible_node_once() -> None:
    out = rank(POOL, seed=7)
    assert sorted(out) == sorted(c.node for c in POOL)


def test_same_seed_same_order() -> None:
    assert rank(POOL, seed=42) == rank(POOL, seed=42)


def test_input_order_does_not_matter() -> None:
    shuffled = POOL[:]
    for seed in range(50):
        random.Random(seed).shuffle(shuffled)
        assert rank(shuffled, seed=seed) == rank(POOL, seed=seed)


def test_different_seeds_give_different_orders() -> None:
    assert len({tuple(rank(POOL, seed=s)) for s in range(50)}) > 5


def test_full_nodes_are_excluded() -> None:
    pool = [cand("0xa", free=0), cand("0xb", free=1), cand("0xc", free=-1, capacity=3)]
    for seed in range(20):
        assert rank(pool, seed=seed) == ["0xb"]
    assert rank([cand("0xa", free=0)], seed=1) == []


def test_higher_score_is_chosen_first_more_often() -> None:
    pool = [cand("0xhi", 0.9), cand("0xlo", 0.3)]
    wins = sum(rank(pool, seed=s, explore_share=0.0)[0] == "0xhi" for s in range(2000))
    # expected share w_hi / (w_hi + w_lo) = 0.95 / 1.30 = 0.73; a coin would give 0.5 +- 0.011
    assert 0.68 < wins / 2000 < 0.78


def test_more_free_capacity_is_chosen_first_more_often() -> None:
    pool = [cand("0xidle", 0.8, free=4, capacity=4), cand("0xbusy", 0.8, free=1, capacity=4)]
    wins = sum(rank(pool, seed=s, explore_share=0.0)[0] == "0xidle" for s in range(2000))
    assert 0.75 < wins / 2000 < 0.85  # expected 4 / 5


def test_score_zero_still_gets_a_little_traffic() -> None:
    pool = [cand("0xgood", 1.0), cand("0xzero", 0.0)]
    wins = sum(rank(pool, seed=s, explore_share=0.0)[0] == "0xzero" for s in range(4000))
    expected = SCORE_FLOOR / (1.0 + 2 * SCORE_FLOOR)
    assert wins > 0 and abs(wins / 4000 - expected) < 0.015


def test_new_nodes_get_about_explore_share_of_first_places() -> None:
    veterans = [cand(f"0xv{i}", 1.0, record=500) for i in range(4)]
    pool = [*veterans, cand("0xnew", 0.0, record=0)]
    n = 4000
    firsts = sum(rank(pool, seed=s, explore_share=0.15)[0] == "0xnew" for s in range(n))
    # 0.15 from exploration, plus the little the floor gives on the other 85% (~1.2% of those)
    assert 0.14 < firsts / n < 0.19


def test_exploration_promotes_only_new_nodes() -> None:
    pool = [cand("0xa", 0.9, record=10), cand("0xb", 0.1, record=10)]
    always = [rank(pool, seed=s, explore_share=1.0) for s in range(200)]
    never = [rank(pool, seed=s, explore_share=0.0) for s in range(200)]
    assert always == never  # no new node: exploration changes nothing
    newcomer = [*pool, cand("0xn", 0.0, record=9)]
    assert all(rank(newcomer, seed=s, explore_share=1.0)[0] == "0xn" for s in range(200))


def test_weight_formula() -> None:
    assert weight(cand("0xa", 0.5, free=2, capacity=4)) == pytest.approx((SCORE_FLOOR + 0.5) * 0.5)
    assert weight(cand("0xa", 0.5, free=9, capacity=4)) == pytest.approx(SCORE_FLOOR + 0.5)
    assert weight(cand("0xa", 0.5, free=0, capacity=4)) == 0.0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="twice"):
        rank([cand("0xa"), cand("0xa", 0.1)], seed=1)
    with pytest.raises(ValueError, match="explore_share"):
        rank(POOL, seed=1, explore_share=1.5)
    with pytest.raises(ValueError, match="score"):
        cand("0xa", score=1.2)
    with pytest.raises(ValueError, match="score"):
        cand("0xa", score=float("nan"))
    with pytest.raises(ValueError, match="capacity"):
        cand("0xa", capacity=0)


def test_draw_seed_is_63_bits() -> None:
    seeds = {draw_seed() for _ in range(100)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**63 for s in seeds)
