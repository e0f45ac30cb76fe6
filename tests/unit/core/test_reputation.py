"""Reputation: counters, scores, levels, quarantine and SLA tiers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivemesh.core.reputation import (
    DEFAULT_LEVEL_RULES,
    MAX_LEVEL,
    NEUTRAL,
    SLA_TIERS,
    WEIGHTS,
    Counters,
    LevelRule,
    LevelState,
    Scores,
    apply_outcome,
    fits_tier,
    is_quarantined,
    scores,
    sum_window,
)


def perfect(n: int) -> Counters:
    return Counters(
        assigned=n,
        acked=n,
        precommitted_on_time=n,
        committed=n,
        valid_reveals=n,
        in_consensus=n,
        tokens=100 * n,
    )


# --- counters ---------------------------------------------------------------------------------------------------


def test_counters_add_field_by_field() -> None:
    a = Counters(assigned=1, tokens=10, gen_ms=5, ttft_ms_total=3, ttft_samples=1)
    b = Counters(assigned=2, dissents=1, tokens=5, ttft_ms_total=7, ttft_samples=1)
    assert a + b == Counters(assigned=3, dissents=1, tokens=15, gen_ms=5, ttft_ms_total=10, ttft_samples=2)
    assert (a + b).mean_ttft_ms == 5.0 and Counters().mean_ttft_ms == 0.0


def test_sum_window() -> None:
    assert sum_window([]) == Counters()
    assert sum_window([perfect(1)] * 3) == perfect(3)
    assert sum_window(iter([perfect(2), Counters(timeouts=1)])) == perfect(2) + Counters(timeouts=1)


# --- scores -----------------------------------------------------------------------------------------------------


def test_new_node_starts_neutral() -> None:
    s = scores(Counters())
    assert s.precommit == s.commit == s.agreement == NEUTRAL
    assert s.total == pytest.approx(NEUTRAL)
    assert s.tokens_per_s == 0.0


def test_ratios_follow_the_prior_formula() -> None:
    c = Counters(
        assigned=10, precommitted_on_time=8, committed=8, valid_reveals=6, in_consensus=3, dissents=3
    )
    s = scores(c, prior=5)
    assert s.precommit == pytest.approx((8 + 2.5) / 15)
    assert s.commit == pytest.approx((6 + 2.5) / 13)
    assert s.agreement == pytest.approx((3 + 2.5) / 11)
    assert s.total == pytest.approx(0.3 * s.precommit + 0.3 * s.commit + 0.4 * s.agreement)


def test_prior_zero_gives_raw_ratios() -> None:
    s = scores(Counters(assigned=4, precommitted_on_time=1), prior=0)
    assert s.precommit == 0.25 and s.agreement == NEUTRAL  # no trials at all stays neutral


def test_immediate_commits_count_without_precommit() -> None:
    s = scores(Counters(assigned=10, committed=10, valid_reveals=10), prior=5)
    assert s.commit == pytest.approx((10 + 2.5) / 15)


def test_a_precommit_never_committed_lowers_the_commit_score() -> None:
    full = scores(Counters(precommitted_on_time=10, committed=10, valid_reveals=10))
    lost = scores(Counters(precommitted_on_time=10, committed=8, valid_reveals=8))
    assert lost.commit < full.commit


def test_scores_approach_the_observed_rate() -> None:
    assert scores(perfect(1000)).total > 0.99
    bad = Counters(assigned=1000, committed=1000, dissents=1000)
    assert scores(bad).total < 0.01


def test_bad_reveal_is_a_hard_penalty() -> None:
    clean = scores(perfect(50))
    one = scores(perfect(50) + Counters(bad_reveals=1))
    assert one.total == pytest.approx(clean.total * WEIGHTS.bad_reveal_factor)
    assert is_quarantined(one, assigned=50)
    assert scores(perfect(50) + Counters(bad_reveals=2)).total < one.total


def test_tokens_per_second() -> None:
    assert scores(Counters(tokens=300, gen_ms=1500)).tokens_per_s == pytest.approx(200.0)


def test_negative_prior_is_rejected() -> None:
    with pytest.raises(ValueError, match="prior"):
        scores(Counters(), prior=-1)


counts = st.integers(0, 200)


@given(agree=counts, dissent=counts, extra=st.integers(1, 50), prior=st.integers(0, 20))
def test_more_dissent_lowers_agreement_and_total(agree: int, dissent: int, extra: int, prior: int) -> None:
    base = Counters(assigned=agree + dissent, in_consensus=agree, dissents=dissent)
    worse = base + Counters(dissents=extra)
    assert scores(worse, prior=prior).agreement <= scores(base, prior=prior).agreement
    assert scores(worse, prior=prior).total <= scores(base, prior=prior).total
    if agree + prior > 0:
        assert scores(worse, prior=prior).agreement < scores(base, prior=prior).agreement


@given(
    st.builds(
        Counters,
        assigned=counts,
        acked=counts,
        precommitted_on_time=counts,
        committed=counts,
        valid_reveals=counts,
        in_consensus=counts,
        dissents=counts,
        timeouts=counts,
        bad_reveals=st.integers(0, 5),
        tokens=counts,
        gen_ms=counts,
    ),
    st.integers(0, 20),
)
def test_scores_stay_in_range(c: Counters, prior: int) -> None:
    s = scores(c, prior=prior)
    for value in (s.precommit, s.commit, s.agreement, s.total):
        assert 0.0 <= value <= 1.0
    assert s.tokens_per_s >= 0.0


# --- levels -----------------------------------------------------------------------------------------------------


def run(state: LevelState, outcomes: str, rules: tuple[LevelRule, ...] = DEFAULT_LEVEL_RULES) -> LevelState:
    for o in outcomes:
        state = apply_outcome(state, o == "1", rules)
    return state


def test_default_rules_cover_levels_0_to_9() -> None:
    assert len(DEFAULT_LEVEL_RULES) == MAX_LEVEL == 10
    assert [r.streak for r in DEFAULT_LEVEL_RULES] == sorted(r.streak for r in DEFAULT_LEVEL_RULES)


def test_up_after_a_streak() -> None:
    assert run(LevelState(), "11") == LevelState(0, 2, 2, 2)
    assert run(LevelState(), "111") == LevelState(level=1)  # counters reset on a move


def test_up_needs_the_success_rate_too() -> None:
    rules = (LevelRule(streak=2, min_success_rate=0.75),) * 10
    assert run(LevelState(), "1011", rules) == LevelState(level=1)  # streak 2 at 3/4 = 0.75: up
    s = run(LevelState(), "101011", rules)  # streak 2 at 4/6: stays
    assert s == LevelState(0, 2, 4, 6)
    s = run(s, "1", rules)  # streak 3 at 5/7: stays
    assert s == LevelState(0, 3, 5, 7)
    assert run(s, "1", rules) == LevelState(level=1)  # 6/8 = 0.75: up


def test_a_failure_breaks_the_streak() -> None:
    s = run(LevelState(), "1101")
    assert s == LevelState(0, 1, 3, 4)


def test_down_after_consecutive_failures() -> None:
    s = LevelState(level=3, streak=4, successes=4, attempts=4)
    s = apply_outcome(s, False)
    assert s == LevelState(3, -1, 4, 5)
    assert apply_outcome(s, False) == LevelState(level=2)
    assert apply_outcome(LevelState(level=3), False, down_after=1) == LevelState(level=2)


def test_level_is_clamped() -> None:
    assert run(LevelState(), "0000").level == 0
    top = run(LevelState(level=MAX_LEVEL), "1" * 200)
    assert top.level == MAX_LEVEL and top.streak == 200
    assert apply_outcome(LevelState(level=42), True).level == MAX_LEVEL


def test_a_perfect_node_climbs_to_the_top() -> None:
    s = run(LevelState(), "1" * sum(r.streak for r in DEFAULT_LEVEL_RULES))
    assert s.level == MAX_LEVEL


def test_down_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="down_after"):
        apply_outcome(LevelState(), True, down_after=0)


# --- quarantine and tiers ---------------------------------------------------------------------------------------


def sc(total: float, precommit: float) -> Scores:
    return Scores(precommit=precommit, commit=1.0, agreement=1.0, total=total, tokens_per_s=0.0)


@pytest.mark.parametrize(
    ("total", "precommit", "assigned", "quarantined"),
    [
        (0.9, 0.9, 100, False),
        (0.49, 0.9, 100, True),
        (0.5, 0.9, 100, False),  # the line itself is fine
        (0.9, 0.59, 100, True),
        (0.9, 0.6, 100, False),
        (0.0, 0.0, 4, False),  # too few samples to judge
        (0.0, 0.0, 5, True),
    ],
)
def test_quarantine_thresholds(total: float, precommit: float, assigned: int, quarantined: bool) -> None:
    assert is_quarantined(sc(total, precommit), assigned=assigned) is quarantined


def test_a_new_node_is_not_quarantined_and_a_reliable_one_stays_out() -> None:
    assert not is_quarantined(scores(Counters()), assigned=0)
    assert not is_quarantined(scores(perfect(5)), assigned=5)
    late = Counters(assigned=10, precommitted_on_time=4, committed=4, valid_reveals=4, in_consensus=4)
    assert is_quarantined(scores(late), assigned=10)


def test_sla_tiers() -> None:
    assert set(SLA_TIERS) == {"low", "medium", "high"}
    assert SLA_TIERS["low"] == (0, 0.0) and SLA_TIERS["medium"][0] == 2 and SLA_TIERS["high"][0] == 5
    assert fits_tier("low", level=0, tokens_per_s=0.0)
    assert not fits_tier("medium", level=1, tokens_per_s=100.0)
    assert not fits_tier("high", level=9, tokens_per_s=1.0)
    assert fits_tier("high", level=5, tokens_per_s=SLA_TIERS["high"][1])
    with pytest.raises(ValueError, match="tier"):
        fits_tier("ultra", level=10, tokens_per_s=1e9)
