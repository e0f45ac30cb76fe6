"""Token-level verification: judging one verifier's evidence, proofs, settling accusations, sybil odds."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivemesh.core.verdict import (
    Claim,
    Fault,
    Reason,
    TokenVerdict,
    Tolerance,
    exact_between,
    fraud_proof,
    judge,
    p_all_sybil,
    settle,
    summary,
)
from hivemesh.protocol.wire import Commit, Evidence, FinishReason, NodeId, SamplingParams, TaskId, Usage

TOL = Tolerance(
    margin=1.0, cap_fraction=0.05, cap_min=2, budget=100.0
)  # the count rules alone (budget: own test)
EOS = 2


def claim(tokens: Sequence[int], finish: FinishReason = "stop", max_tokens: int = 256) -> Claim:
    return Claim(tuple(tokens), finish, max_tokens)


def evidence(
    c: Claim,
    *,
    flips: dict[int, float] | None = None,
    text_ok: bool = True,
    prompt_tokens: int = 10,
    context_length: int = 2048,
    problem: str = "",
) -> Evidence:
    """Evidence that agrees with every claimed token, except at ``flips`` (position -> margin), where the
    verifier picks another token (claimed + 1) and the claimed token ranks second. Tests that need other columns
    replace them with ``model_copy(update=...)``, which skips validation as a broken verifier would."""
    flips = flips or {}
    n = 0 if problem else len(c.tokens)
    return Evidence(
        task_id="t1",
        node="0xverifier",
        text_ok=text_ok,
        prompt_tokens=prompt_tokens,
        context_length=context_length,
        problem=problem,
        elapsed_ms=5,
        picks=tuple(c.tokens[i] + 1 if i in flips else c.tokens[i] for i in range(n)),
        margins=tuple(flips.get(i, 0.0) for i in range(n)),
        ranks=tuple(2 if i in flips else 1 for i in range(n)),
        logprobs=tuple(-1.5 if i in flips else -0.25 for i in range(n)),
    )


def answer(n: int) -> Claim:
    """An answer of n tokens that the model ended itself (the last one is the end-of-generation token)."""
    return claim([*range(100, 100 + n - 1), EOS])


def verdict(fault: Fault, reason: Reason = "ok") -> TokenVerdict:
    return TokenVerdict(fault == "none", fault, reason, None, 0, 0, 0.0, 0.0)


# --- accepted answers ---------------------------------------------------------------------------------------------


def test_exact_match_is_accepted() -> None:
    c = answer(20)
    v = judge(c, evidence(c), TOL)
    assert v == TokenVerdict(True, "none", "ok", None, 0, 20, 0.0, -0.25, TOL)


def test_near_tie_within_the_margin_is_accepted_and_counted() -> None:
    c = answer(20)
    v = judge(c, evidence(c, flips={3: 0.4, 11: 1.0}), TOL)  # the margin itself is still tolerated
    assert (v.accepted, v.reason, v.tolerated, v.max_margin) == (True, "ok", 2, 1.0)
    assert v.mean_logprob == pytest.approx((18 * -0.25 + 2 * -1.5) / 20)


def test_an_exact_tie_where_the_pick_differs_counts_as_tolerated() -> None:
    c = answer(10)
    assert judge(c, evidence(c, flips={4: 0.0}), TOL).tolerated == 1


def test_judge_uses_the_default_tolerance_when_none_is_given() -> None:
    c = answer(5)
    assert judge(c, evidence(c, flips={0: 0.9})).tolerance == Tolerance()


# --- near-tie cap -------------------------------------------------------------------------------------------------


def test_the_cap_is_a_share_of_the_answer_with_a_floor() -> None:
    assert TOL.cap(0) == 2
    assert TOL.cap(59) == 2
    assert TOL.cap(60) == 3
    assert TOL.cap(100) == 5


def test_near_ties_up_to_the_cap_pass() -> None:
    c = answer(100)
    v = judge(c, evidence(c, flips=dict.fromkeys((5, 20, 40, 60, 80), 0.5)), TOL)
    assert (v.accepted, v.tolerated) == (True, 5)


def test_near_ties_over_the_cap_are_rejected_where_the_cap_was_exceeded() -> None:
    c = answer(100)  # cap 5: the sixth near-tie, at position 90, is one too many
    v = judge(c, evidence(c, flips=dict.fromkeys((5, 20, 40, 60, 80, 90, 95), 0.5)), TOL)
    assert (v.accepted, v.fault, v.reason, v.position, v.tolerated) == (
        False,
        "generator",
        "too_many_near_ties",
        90,
        7,
    )


def test_a_short_answer_may_use_the_floor_of_the_cap() -> None:
    c = answer(4)
    assert judge(c, evidence(c, flips={0: 0.5, 1: 0.5}), TOL).accepted
    v = judge(c, evidence(c, flips={0: 0.5, 1: 0.5, 2: 0.5}), TOL)
    assert (v.reason, v.position) == ("too_many_near_ties", 2)


def test_a_large_margin_wins_over_near_ties_before_it() -> None:
    c = answer(10)
    v = judge(c, evidence(c, flips={0: 0.5, 1: 0.5, 2: 0.5, 8: 7.0}), TOL)
    assert (v.reason, v.position) == ("token_mismatch", 8)


# --- token mismatch -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 9, 19], ids=["first", "middle", "end-of-generation"])
def test_one_large_margin_is_rejected_at_its_position(position: int) -> None:
    c = answer(20)
    v = judge(c, evidence(c, flips={position: 4.2}), TOL)
    assert (v.accepted, v.fault, v.reason, v.position) == (False, "generator", "token_mismatch", position)
    assert (v.checked, v.max_margin) == (20, 4.2)


def test_the_first_of_several_large_margins_is_named() -> None:
    c = answer(20)
    assert judge(c, evidence(c, flips={7: 3.0, 2: 1.01}), TOL).position == 2


# --- the verifier's own failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "columns",
    [
        {"picks": (1, 2, 3)},
        {"margins": (0.0,) * 6},
        {"ranks": ()},
        {"logprobs": (-0.1,) * 4},
    ],
    ids=["picks", "margins", "ranks", "logprobs"],
)
def test_a_column_of_the_wrong_length_is_the_verifiers_fault(columns: dict[str, tuple[object, ...]]) -> None:
    c = answer(5)
    v = judge(c, evidence(c).model_copy(update=columns), TOL)
    assert (v.accepted, v.fault, v.reason, v.position, v.checked) == (
        False,
        "verifier",
        "invalid_evidence",
        None,
        0,
    )


@pytest.mark.parametrize(
    "columns",
    [
        {"picks": (100, 101, 9, 103, EOS), "margins": (0.0, 0.0, math.nan, 0.0, 0.0)},
        {"picks": (100, 101, 9, 103, EOS), "margins": (0.0, 0.0, math.inf, 0.0, 0.0)},
        {"picks": (100, 101, 9, 103, EOS), "margins": (0.0, 0.0, -0.5, 0.0, 0.0)},
        {"logprobs": (-0.1, math.nan, -0.1, -0.1, -0.1)},
        {"logprobs": (-0.1, -math.inf, -0.1, -0.1, -0.1)},
        {"logprobs": (-0.1, 0.5, -0.1, -0.1, -0.1)},
        {"margins": (0.0, 0.3, 0.0, 0.0, 0.0)},  # a margin where the pick is the claimed token
    ],
    ids=[
        "nan-margin",
        "inf-margin",
        "negative-margin",
        "nan-logprob",
        "inf-logprob",
        "positive-logprob",
        "self",
    ],
)
def test_impossible_numbers_are_the_verifiers_fault(columns: dict[str, tuple[object, ...]]) -> None:
    c = claim([100, 101, 102, 103, EOS])
    v = judge(c, evidence(c).model_copy(update=columns), TOL)
    assert (v.fault, v.reason) == ("verifier", "invalid_evidence")


def test_a_logprob_a_hair_above_zero_is_float_noise() -> None:
    c = answer(3)
    assert judge(c, evidence(c).model_copy(update={"logprobs": (1e-7, -0.1, 0.0)}), TOL).accepted


def test_an_unknown_problem_code_is_the_verifiers_fault() -> None:
    c = answer(3)
    assert judge(c, evidence(c, problem="oom"), TOL).fault == "verifier"


def test_a_problem_with_columns_is_the_verifiers_fault() -> None:
    c = answer(3)
    e = evidence(c).model_copy(update={"problem": "context"})
    assert judge(c, e, TOL).reason == "invalid_evidence"


# --- problem codes and text ---------------------------------------------------------------------------------------


def test_context_overflow_is_nobodys_fault() -> None:
    c = answer(30)
    v = judge(c, evidence(c, problem="context"), TOL)
    assert (v.accepted, v.fault, v.reason, v.position, v.checked) == (False, "nobody", "context", None, 0)


def test_a_token_outside_the_vocabulary_is_the_generators_fault() -> None:
    c = answer(30)
    v = judge(c, evidence(c, problem="bad_token"), TOL)
    assert (v.accepted, v.fault, v.reason, v.position) == (False, "generator", "bad_token", None)


def test_tokens_that_do_not_spell_the_revealed_text_are_rejected() -> None:
    c = answer(30)
    v = judge(c, evidence(c, text_ok=False), TOL)
    assert (v.fault, v.reason, v.position, v.checked) == ("generator", "text_mismatch", None, 30)


# --- length, truncation and empty answers -------------------------------------------------------------------------


def test_length_at_max_tokens_is_accepted() -> None:
    c = claim(range(100, 116), "length", max_tokens=16)
    assert judge(c, evidence(c), TOL).accepted


def test_length_with_too_few_tokens_is_truncated() -> None:
    c = claim(range(100, 110), "length", max_tokens=16)
    v = judge(c, evidence(c), TOL)
    assert (v.fault, v.reason, v.position) == ("generator", "truncated", None)


def test_length_stopped_by_the_context_limit_is_accepted() -> None:
    c = claim(range(100, 110), "length", max_tokens=256)
    assert judge(c, evidence(c, prompt_tokens=2038, context_length=2048), TOL).accepted
    assert judge(c, evidence(c, prompt_tokens=2037, context_length=2048), TOL).reason == "truncated"


def test_more_tokens_than_max_tokens_is_overlong() -> None:
    c = claim([*range(100, 116), EOS], "stop", max_tokens=16)
    assert judge(c, evidence(c), TOL).reason == "overlong"


def test_an_empty_length_answer_is_truncated_when_there_was_room() -> None:
    c = claim([], "length", max_tokens=1)
    v = judge(c, evidence(c), TOL)
    assert (v.fault, v.reason) == ("generator", "truncated")


def test_an_empty_length_answer_is_accepted_when_the_prompt_fills_the_context() -> None:
    c = claim([], "length", max_tokens=64)
    v = judge(c, evidence(c, prompt_tokens=2048, context_length=2048), TOL)
    assert v == TokenVerdict(True, "none", "ok", None, 0, 0, 0.0, 0.0, TOL)


def test_an_empty_stop_answer_is_rejected() -> None:
    # An honest stop ends with the end-of-generation token, so it has at least one token to check.
    c = claim([], "stop")
    assert judge(c, evidence(c), TOL).reason == "empty"


def test_an_answer_of_just_the_end_of_generation_token_is_accepted() -> None:
    c = claim([EOS], "stop")
    assert judge(c, evidence(c), TOL).accepted
    assert judge(c, evidence(c, flips={0: 9.0}), TOL).position == 0


# --- claims from commits ------------------------------------------------------------------------------------------


def test_a_claim_is_read_from_the_commit_and_the_sampling_parameters() -> None:
    commit = Commit(
        task_id="t1",
        node="0xgen",
        output="hi",
        salt="00",
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        finish_reason="length",
        elapsed_ms=1,
        tokens=(7, 8),
    )
    assert Claim.of(commit, SamplingParams(max_tokens=2)) == Claim((7, 8), "length", 2)


# --- fraud proofs and summaries -----------------------------------------------------------------------------------


def proof_for(c: Claim, e: Evidence) -> dict[str, object] | None:
    p = fraud_proof(TaskId("t1"), NodeId("0xgen"), NodeId("0xver"), c, e, judge(c, e, TOL))
    return None if p is None else p.to_dict()


def test_a_token_mismatch_proof_names_the_position_and_the_numbers() -> None:
    c = answer(20)
    proof = proof_for(c, evidence(c, flips={9: 4.5}))
    assert proof is not None
    assert {k: proof[k] for k in ("reason", "position", "claimed", "pick", "margin", "rank", "logprob")} == {
        "reason": "token_mismatch",
        "position": 9,
        "claimed": 109,
        "pick": 110,
        "margin": 4.5,
        "rank": 2,
        "logprob": -1.5,
    }
    assert proof["tolerance"] == {
        "margin": 1.0,
        "cap_fraction": 0.05,
        "cap_min": 2,
        "budget": 100.0,
        "budget_per_token": 0.01,
    }
    assert (proof["task_id"], proof["generator"], proof["verifier"]) == ("t1", "0xgen", "0xver")
    json.dumps(proof)  # it goes into the task record as JSON


def test_a_near_tie_proof_lists_the_tolerated_positions_up_to_the_cap() -> None:
    c = answer(10)
    proof = proof_for(c, evidence(c, flips={1: 0.5, 4: 0.5, 6: 0.5, 8: 0.5}))
    assert proof is not None
    assert (proof["reason"], proof["position"], proof["near_ties"]) == ("too_many_near_ties", 6, (1, 4, 6))


def test_a_proof_without_a_position_carries_the_lengths() -> None:
    c = claim(range(100, 110), "length", max_tokens=16)
    proof = proof_for(c, evidence(c))
    assert proof is not None
    assert (proof["reason"], proof["position"], proof["claimed"]) == ("truncated", None, None)
    assert (proof["claimed_tokens"], proof["max_tokens"], proof["prompt_tokens"]) == (10, 16, 10)


@pytest.mark.parametrize("problem", ["", "context"])
def test_there_is_no_proof_without_an_accusation(problem: str) -> None:
    c = answer(5)
    assert proof_for(c, evidence(c, problem=problem)) is None
    assert (
        proof_for(c, evidence(c).model_copy(update={"ranks": ()})) is None
    )  # the verifier failed: nobody is accused


def test_the_summary_is_the_answers_verification_block() -> None:
    c = answer(3)
    v = judge(c, evidence(c, flips={1: 0.123456}).model_copy(update={"logprobs": (-0.1, -0.2, -0.3)}), TOL)
    assert summary(v) == {
        "reason": "ok",
        "position": None,
        "checked": 3,
        "tolerated": 1,
        "max_margin": 0.1235,
        "mean_logprob": -0.2,
    }


# --- settling an accusation ---------------------------------------------------------------------------------------

ACCUSE = verdict("generator", "token_mismatch")
ACCEPT = verdict("none")
FAILED = verdict("verifier", "invalid_evidence")
UNVERIFIABLE = verdict("nobody", "context")


def test_fraud_when_every_valid_recheck_also_rejects() -> None:
    s = settle(ACCUSE, [verdict("generator", "too_many_near_ties"), ACCUSE, FAILED])
    assert (s.outcome, s.confirmed, s.refuted, s.failed) == ("fraud", 2, 0, (2,))


def test_false_accusation_when_every_valid_recheck_accepts() -> None:
    s = settle(ACCUSE, [ACCEPT, UNVERIFIABLE, ACCEPT])
    assert (s.outcome, s.confirmed, s.refuted, s.failed) == ("false_accusation", 0, 2, ())


def test_inconclusive_when_the_rechecks_disagree() -> None:
    assert settle(ACCUSE, [ACCEPT, ACCUSE]).outcome == "inconclusive"


@pytest.mark.parametrize(
    "escalations", [[], [FAILED, FAILED], [UNVERIFIABLE, FAILED]], ids=["none", "failed", "mixed"]
)
def test_inconclusive_without_valid_rechecks(escalations: list[TokenVerdict]) -> None:
    s = settle(ACCUSE, escalations)
    assert (s.outcome, s.confirmed, s.refuted) == ("inconclusive", 0, 0)
    assert s.failed == tuple(i for i, v in enumerate(escalations) if v is FAILED)


@pytest.mark.parametrize("first", [ACCEPT, FAILED, UNVERIFIABLE], ids=["accepted", "verifier", "nobody"])
def test_only_an_accusation_is_settled(first: TokenVerdict) -> None:
    with pytest.raises(ValueError, match="accusation"):
        settle(first, [ACCUSE])


# --- sybil odds ---------------------------------------------------------------------------------------------------


def test_p_all_sybil_matches_hand_computed_values() -> None:
    assert p_all_sybil(2, 6, 1) == pytest.approx(1 / 7)  # one other sybil among 7 candidates
    assert p_all_sybil(2, 6, 2) == 0.0  # only one other sybil to draw
    assert p_all_sybil(3, 6, 2) == pytest.approx(1 / 28)  # C(2,2) / C(8,2)
    assert p_all_sybil(5, 5, 3) == pytest.approx(4 / 84)  # C(4,3) / C(9,3)
    assert p_all_sybil(4, 0, 3) == 1.0
    assert p_all_sybil(2, 6, 0) == 1.0


@pytest.mark.parametrize(("s", "h", "v"), [(0, 5, 1), (2, -1, 1), (2, 6, 8), (2, 6, -1)])
def test_p_all_sybil_rejects_impossible_draws(s: int, h: int, v: int) -> None:
    with pytest.raises(ValueError):
        p_all_sybil(s, h, v)


@pytest.mark.parametrize(
    "kwargs", [{"margin": -0.1}, {"margin": math.inf}, {"cap_fraction": 1.5}, {"cap_min": -1}]
)
def test_a_tolerance_out_of_range_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Tolerance(**kwargs)


# --- properties ---------------------------------------------------------------------------------------------------


@given(
    margins=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=60),
    threshold=st.floats(min_value=0.0, max_value=5.0),
    finish=st.sampled_from(["stop", "length"]),
)
def test_never_accepts_when_a_margin_exceeds_the_tolerance(
    margins: list[float], threshold: float, finish: FinishReason
) -> None:
    # no cap, no allowance: only margins decide
    tol = Tolerance(margin=threshold, cap_fraction=1.0, cap_min=len(margins), budget=1e9)
    c = claim(range(100, 100 + len(margins)), finish, max_tokens=len(margins))
    e = evidence(c, flips={i: m for i, m in enumerate(margins) if m > 0.0})
    v = judge(c, e, tol)
    if any(m > threshold for m in margins):
        assert not v.accepted
        assert v.reason == "token_mismatch"
        assert v.position == next(i for i, m in enumerate(margins) if m > threshold)
    else:
        assert v.accepted


def test_near_ties_whose_margins_add_up_past_the_allowance_are_rejected_where_it_is_crossed() -> None:
    tol = Tolerance(margin=0.75, cap_fraction=0.11, cap_min=6, budget=1.0, budget_per_token=0.01)
    c = answer(24)
    honest = judge(c, evidence(c, flips={3: 0.1, 9: 0.3, 17: 0.2}), tol)  # noise: small, few
    assert honest.accepted and honest.tolerated == 3
    other_model = judge(c, evidence(c, flips={2: 0.5, 7: 0.6, 11: 0.4}), tol)  # each within the margin
    assert (other_model.fault, other_model.reason, other_model.position) == (
        "generator",
        "too_many_near_ties",
        7,
    )
    assert tol.allowance(24) == 1.0 and tol.allowance(300) == 3.0


def test_exact_tolerance_forgives_nothing_not_even_a_tie() -> None:
    exact = Tolerance.exact()
    assert exact.margin == 0.0 and exact.cap(1000) == 0 and exact.allowance(1000) == 0.0
    c = answer(24)
    assert judge(c, evidence(c), exact).accepted
    # the other side of an exact tie (margin 0): the same logits and tie rule would have picked the pick
    tie = judge(c, evidence(c, flips={5: 0.0}), exact)
    assert (tie.fault, tie.reason, tie.position) == ("generator", "token_mismatch", 5)  # a proof, not noise
    assert judge(c, evidence(c, flips={5: 0.0}), Tolerance()).accepted  # the calibrated one forgives it


def test_which_checks_are_exact_follows_the_numeric_profiles() -> None:
    same = "llama.cpp-0.3.36/aaaaaaaaaaaa/1111111111111111"
    other_kernels = "llama.cpp-0.3.36/bbbbbbbbbbbb/1111111111111111"
    other_weights = "llama.cpp-0.3.36/aaaaaaaaaaaa/2222222222222222"
    assert exact_between(same, same)  # bit-identical logits
    assert not exact_between(same, other_kernels)  # same weights, other arithmetic: the calibrated tolerance
    assert exact_between(same, other_weights) and exact_between(other_weights, same)  # another model file
    assert not exact_between("", same) and not exact_between(same, "")  # unknown: the calibrated tolerance
    assert not exact_between("", "")
    # opaque profiles (no parts): equality only
    assert exact_between("opaque", "opaque") and not exact_between("opaque", "other")
