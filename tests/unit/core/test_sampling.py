"""The replayable sampler: the generator's pick is a function of (logits, seed, position), and the verifier's
check on the same logits agrees with it exactly; on nearby logits it disagrees only by small margins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hivemesh.core.sampling import History as SamplingHistory
from hivemesh.core.sampling import Sampler, check, check_all, gumbel, pick
from hivemesh.protocol.wire import SamplingParams

VOCAB = 49_152


def logits(seed: int, n: int = VOCAB, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_replaying_pick_on_the_same_logits_gives_the_same_token(temperature: float) -> None:
    z = logits(1)
    for seed in range(20):
        s = Sampler.of(SamplingParams(temperature=temperature, seed=seed, top_p=0.95))
        for position in range(10):
            assert pick(z, s, position) == pick(z.copy(), s, position)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_checking_the_pick_gives_margin_zero_and_rank_one(temperature: float) -> None:
    z = logits(2)
    for seed in range(10):
        s = Sampler.of(SamplingParams(temperature=temperature, seed=seed))
        for position in range(5):
            c = check(z, pick(z, s, position), s, position)
            assert (c.margin, c.rank) == (0.0, 1)
            assert c.pick == pick(z, s, position)
            assert c.logprob <= 0.0


def test_sampling_with_different_seeds_and_positions_varies() -> None:
    z = logits(3, scale=0.5)  # flat enough that the noise matters
    s = [Sampler.of(SamplingParams(temperature=1.0, seed=seed)) for seed in range(30)]
    assert len({pick(z, x, 0) for x in s}) > 5
    assert len({pick(z, s[0], p) for p in range(30)}) > 5


def test_the_noise_of_a_token_does_not_depend_on_the_other_candidates() -> None:
    ids = np.array([5, 17, 40_000])
    assert gumbel(7, 3, ids)[1] == gumbel(7, 3, np.array([17]))[0]


def test_small_logit_noise_moves_margins_only_a_little() -> None:
    rng = np.random.default_rng(4)
    for temperature in (0.0, 0.7):
        s = Sampler.of(SamplingParams(temperature=temperature, seed=11))
        for position in range(50):
            z = logits(100 + position)
            claimed = pick(z, s, position)
            c = check(z + rng.normal(0, 1e-3, VOCAB).astype(np.float32), claimed, s, position)
            assert c.margin < 0.01  # at most about twice the noise, and 0 where the pick did not move
            assert c.rank <= 2


def test_a_different_token_has_a_large_margin() -> None:
    z = logits(5)
    s = Sampler.of(SamplingParams(temperature=0.0))
    worst = int(np.argmin(z))
    c = check(z, worst, s, 0)
    assert c.margin == pytest.approx(float(z.max() - z.min()))
    assert c.rank == VOCAB


def test_a_claim_outside_the_candidates_is_ranked_after_them_with_a_positive_margin() -> None:
    z = logits(6)
    s = Sampler.of(SamplingParams(temperature=0.7, seed=3))
    outsider = int(np.argsort(z)[-200])  # well outside the top 40
    c = check(z, outsider, s, 0)
    assert c.rank == 200
    assert c.margin > 1.0
    assert c.logprob < check(z, c.pick, s, 0).logprob


def test_pick_frequencies_over_seeds_follow_the_softmax() -> None:
    z = np.array([2.0, 1.5, 1.0, 0.0, -1.0], dtype=np.float32)
    temperature, n = 0.8, 20_000
    counts = np.zeros(len(z))
    for seed in range(n):
        counts[pick(z, Sampler(temperature=temperature, min_p=0.0, seed=seed), 0)] += 1
    p = np.exp(z / temperature) / np.exp(z / temperature).sum()
    assert np.abs(counts / n - p).max() < 5 * math.sqrt(0.25 / n)  # five standard errors at worst


def test_positions_draw_independent_noise() -> None:
    z = np.zeros(2, dtype=np.float32)
    s = Sampler(temperature=1.0, min_p=0.0, seed=42)
    ones = sum(pick(z, s, position) for position in range(4000))
    assert abs(ones / 4000 - 0.5) < 0.05


def test_top_p_and_min_p_cut_the_tail() -> None:
    z = np.array([5.0, 4.9, 0.0, -0.1], dtype=np.float32)
    top_p = {pick(z, Sampler(temperature=1.0, top_p=0.5, min_p=0.0, seed=seed), 0) for seed in range(300)}
    min_p = {pick(z, Sampler(temperature=1.0, min_p=0.05, seed=seed), 0) for seed in range(300)}
    assert top_p == {0}
    assert min_p == {0, 1}


@pytest.mark.parametrize("seed", [-1, 2**64 - 1, 2**70, 0])
def test_any_int_seed_is_accepted(seed: int) -> None:
    s = Sampler.of(SamplingParams(temperature=0.9, seed=seed))
    assert 0 <= s.seed < 2**64
    z = logits(7)
    assert check(z, pick(z, s, 0), s, 0).margin == 0.0


def test_seeds_equal_mod_2_64_sample_alike() -> None:
    z = logits(8, scale=0.3)
    a, b = (
        Sampler.of(SamplingParams(temperature=1.0, seed=-1)),
        Sampler.of(SamplingParams(temperature=1.0, seed=2**64 - 1)),
    )
    assert [pick(z, a, p) for p in range(20)] == [pick(z, b, p) for p in range(20)]


def test_greedy_ties_go_to_the_lowest_id() -> None:
    z = np.array([0.0, 3.0, 1.0, 3.0], dtype=np.float32)
    s = Sampler.of(SamplingParams(temperature=0.0))
    assert pick(z, s, 0) == 1
    tied = check(z, 3, s, 0)
    assert (tied.pick, tied.margin, tied.rank) == (1, 0.0, 2)
    assert pick(z, Sampler.of(SamplingParams(temperature=1e-9)), 0) == 1  # ~0 is greedy too


def test_penalties_use_the_history() -> None:
    z = np.array([1.0, 0.9, 0.0], dtype=np.float32)
    s = Sampler.of(SamplingParams(temperature=0.0, presence_penalty=0.5))
    assert pick(z, s, 1, history=[0]) == 1
    assert pick(z, s, 1, history=[2]) == 0
    f = Sampler.of(SamplingParams(temperature=0.0, frequency_penalty=0.3))
    assert pick(z, f, 2, history=[0]) == 1
    assert check(z, 1, f, 2, history=[0]).margin == 0.0


def test_check_all_agrees_with_a_generator_that_picks_token_after_token() -> None:
    s = Sampler.of(SamplingParams(temperature=0.8, seed=5, frequency_penalty=0.4, presence_penalty=0.2))
    rows = np.stack([logits(200 + i, n=1000, scale=1.0) for i in range(60)])
    gen = SamplingHistory()
    claimed = [gen.pick(rows[i], s) for i in range(60)]
    assert len(set(claimed)) > 10
    assert claimed == [pick(rows[i], s, i, claimed[:i]) for i in range(60)]
    checks = check_all(rows, claimed, s)
    assert [c.pick for c in checks] == claimed
    assert all(c.margin == 0.0 and c.rank == 1 for c in checks)


def test_a_token_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError):
        check(logits(9, n=10), 10, Sampler(temperature=0.0), 0)


def test_a_rival_at_the_filters_boundary_costs_no_more_than_its_distance_to_it() -> None:
    """Noise may put a token just inside the verifier's top-k that was just outside the generator's: its Gumbel
    draw may beat the claim by a lot, but the claim is only as far off as that token is from the boundary."""
    z = np.array([2.0, 1.0, 1.001, -5.0], dtype=np.float32)
    s = next(
        x
        for x in (Sampler(temperature=1.0, top_k=2, min_p=0.0, seed=seed) for seed in range(1000))
        if pick(z, x, 0) == 2
    )
    c = check(z, 0, s, 0)
    assert c.pick == 2 and c.rank == 2
    assert c.margin <= 0.002
