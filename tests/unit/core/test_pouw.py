"""The token-mode proof of useful work, transition by transition, without a socket or a clock."""

from __future__ import annotations

import secrets
from dataclasses import replace

from hivemesh.core import pouw
from hivemesh.core.pouw import (
    Acked,
    Cancel,
    Deliver,
    Draw,
    Drawn,
    EvidenceIn,
    Expired,
    Failed,
    FailTask,
    Note,
    Phase,
    Precommitted,
    Revealed,
    SendAssign,
    SendReveal,
    SendVerify,
    Strike,
    TokenPolicy,
    TokenPoUW,
)
from hivemesh.core.verdict import Tolerance
from hivemesh.protocol import wire

TOKENS = (5, 6, 7, 2)  # 2 plays the end-of-generation token
POLICY = TokenPolicy(verifiers=1, escalation=2, regenerations=1, max_tokens=16)


def kinds(effects: list[pouw.Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


def of(effects: list[pouw.Effect], cls: type) -> list:  # type: ignore[type-arg]
    return [e for e in effects if isinstance(e, cls)]


def commit(node: str, tokens: tuple[int, ...] = TOKENS, output: str = "a b c") -> tuple[str, wire.Commit]:
    salt = secrets.token_bytes(16)
    c = wire.Commit(
        task_id="t1",
        node=node,
        output=output,
        salt=salt.hex(),
        usage=wire.Usage(prompt_tokens=3, completion_tokens=len(tokens) - 1),
        finish_reason="stop",
        elapsed_ms=5,
        tokens=tokens,
    )
    return wire.commit_digest(salt, output, tokens), c


def evidence(node: str, tokens: tuple[int, ...] = TOKENS, bad_at: int | None = None) -> wire.Evidence:
    picks = tuple(t + 1 if i == bad_at else t for i, t in enumerate(tokens))
    margins = tuple(9.0 if i == bad_at else 0.0 for i in range(len(tokens)))
    return wire.Evidence(
        task_id="t1",
        node=node,
        picks=picks,
        margins=margins,
        ranks=tuple(5 if i == bad_at else 1 for i in range(len(tokens))),
        logprobs=tuple(-8.0 if i == bad_at else -0.1 for i in range(len(tokens))),
        text_ok=True,
        prompt_tokens=3,
        context_length=2048,
        elapsed_ms=3,
    )


def generated(m: TokenPoUW, node: str = "G", tokens: tuple[int, ...] = TOKENS) -> list[pouw.Effect]:
    """Drive generator ``node`` from its draw to its reveal; returns the effects of the reveal."""
    m.apply(Drawn("generator", (node,), 0.0))
    m.apply(Acked(node, 0.1))
    digest, c = commit(node, tokens)
    m.apply(Precommitted(node, digest, 0.2))
    return m.apply(Revealed(node, c, 0.3))


def test_honest_answer_is_verified_by_one_verifier_drawn_after_the_reveal() -> None:
    m = TokenPoUW("t1", POLICY)
    assert m.start() == [Draw("generator", 1, frozenset())]
    eff = m.apply(Drawn("generator", ("G",), 0.0))
    assert of(eff, SendAssign) == [SendAssign("G")]
    assert m.apply(Acked("G", 0.1))[0].phase == "acked"  # type: ignore[union-attr]
    digest, c = commit("G")
    eff = m.apply(Precommitted("G", digest, 0.2))
    assert of(eff, SendReveal) == [SendReveal("G")]
    eff = m.apply(Revealed("G", c, 0.3))
    draw = of(eff, Draw)
    assert draw == [Draw("verifier", 1, frozenset({"G"}))]  # never the generator itself
    eff = m.apply(Drawn("verifier", ("V",), 0.4))
    assert [e.node for e in of(eff, SendVerify)] == ["V"]
    eff = m.apply(EvidenceIn("V", evidence("V"), 0.5))
    (d,) = of(eff, Deliver)
    assert d.verdict == "verified" and d.generator == "G" and d.verifiers == ("V",)
    assert not of(eff, Strike)
    assert m.phase is Phase.DONE


def test_reveal_that_does_not_match_the_precommit_is_struck_and_regenerated() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0))
    digest, _ = commit("G")
    m.apply(Precommitted("G", digest, 0.2))
    _, other = commit("G", output="something else")
    eff = m.apply(Revealed("G", other, 0.3))
    assert Strike("G", "bad_reveal", "bad_reveal") in eff
    assert Draw("generator", 1, frozenset({"G"})) in eff


def test_tokens_cannot_change_after_the_precommit() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0))
    salt = b"s" * 16
    m.apply(Precommitted("G", wire.commit_digest(salt, "a b c", TOKENS), 0.2))
    swapped = commit("G", tokens=(5, 6, 8, 2))[1].model_copy(update={"salt": salt.hex()})
    eff = m.apply(Revealed("G", swapped, 0.3))
    assert [s.kind for s in of(eff, Strike)] == ["bad_reveal"]


def test_rejection_confirmed_by_escalation_is_fraud_and_the_task_is_regenerated() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("V",), 0.4))
    eff = m.apply(EvidenceIn("V", evidence("V", bad_at=2), 0.5))
    assert not of(eff, Strike)  # one verifier's word punishes nobody
    assert of(eff, Draw) == [Draw("verifier", 2, frozenset({"G", "V"}))]
    assert m.phase is Phase.ESCALATING
    m.apply(Drawn("verifier", ("E1", "E2"), 0.6))
    m.apply(EvidenceIn("E1", evidence("E1", bad_at=2), 0.7))
    eff = m.apply(EvidenceIn("E2", evidence("E2", bad_at=1), 0.8))
    assert [(s.node, s.kind) for s in of(eff, Strike)] == [("G", "fraud")]
    assert m.fraud and m.fraud[0]["position"] == 2 and m.fraud[0]["generator"] == "G"
    # a verifier that confirmed it may regenerate; the fraudster takes no further role
    assert of(eff, Draw) == [Draw("generator", 1, frozenset({"G"}))]
    eff = generated(m, "E1")
    assert of(eff, Draw) == [Draw("verifier", 1, frozenset({"G", "E1"}))]
    m.apply(Drawn("verifier", ("V2",), 1.0))
    eff = m.apply(EvidenceIn("V2", evidence("V2"), 1.1))
    (d,) = of(eff, Deliver)
    assert d.generator == "E1" and d.verdict == "verified" and len(d.fraud) == 1


def test_accusation_refuted_by_every_recheck_strikes_nobody_and_the_disputed_answer_is_regenerated() -> None:
    """Rechecks that accept are a word against the accuser's word, not a proof: sybil rechecks would otherwise
    get an honest accuser struck and their fraud served. Nobody is struck, the answer is not served, the accuser
    takes no further role in the task, and another generator answers."""
    m = TokenPoUW("t1", POLICY)
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("LIAR",), 0.4))
    m.apply(EvidenceIn("LIAR", evidence("LIAR", bad_at=0), 0.5))
    m.apply(Drawn("verifier", ("E1", "E2"), 0.6))
    m.apply(EvidenceIn("E1", evidence("E1"), 0.7))
    eff = m.apply(EvidenceIn("E2", evidence("E2"), 0.8))
    assert not of(eff, Strike) and not of(eff, Deliver) and not m.fraud
    assert [n.phase for n in of(eff, Note)][-2:] == ["unconfirmed_accusation", "regenerate"]
    assert of(eff, Draw) == [Draw("generator", 1, frozenset({"G", "LIAR"}))]
    eff = generated(m, "E1")
    assert of(eff, Draw) == [Draw("verifier", 1, frozenset({"G", "LIAR", "E1"}))]  # the accuser is barred
    m.apply(Drawn("verifier", ("E2",), 1.0))
    (d,) = of(m.apply(EvidenceIn("E2", evidence("E2"), 1.1)), Deliver)
    assert d.verdict == "verified" and d.generator == "E1" and d.verifiers == ("E2",)


def test_mixed_rechecks_punish_nobody_and_regenerate() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("V",), 0.4))
    m.apply(EvidenceIn("V", evidence("V", bad_at=3), 0.5))
    m.apply(Drawn("verifier", ("E1", "E2"), 0.6))
    m.apply(EvidenceIn("E1", evidence("E1"), 0.7))
    eff = m.apply(EvidenceIn("E2", evidence("E2", bad_at=3), 0.8))
    assert not of(eff, Strike)
    assert of(eff, Draw)[0].role == "generator"


def test_rejected_answers_are_never_delivered_when_regeneration_runs_out() -> None:
    m = TokenPoUW("t1", TokenPolicy(verifiers=1, escalation=1, regenerations=0, max_tokens=16))
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("V",), 0.4))
    m.apply(EvidenceIn("V", evidence("V", bad_at=0), 0.5))
    m.apply(Drawn("verifier", ("E",), 0.6))
    eff = m.apply(EvidenceIn("E", evidence("E", bad_at=0), 0.7))
    assert not of(eff, Deliver) and of(eff, FailTask)
    assert m.phase is Phase.DONE


def test_no_verifier_available_gives_an_unverified_answer() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    generated(m, "G")
    eff = m.apply(Drawn("verifier", (), 0.4))
    (d,) = of(eff, Deliver)
    assert d.verdict == "unverified" and d.verifiers == ()


def test_invalid_evidence_strikes_the_verifier_and_draws_a_replacement() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("V",), 0.4))
    short = evidence("V").model_copy(update={"margins": (0.0,)})
    eff = m.apply(EvidenceIn("V", short, 0.5))
    assert [(s.node, s.kind) for s in of(eff, Strike)] == [("V", "invalid_evidence")]
    assert of(eff, Draw) == [Draw("verifier", 1, frozenset({"G", "V"}))]


def test_deadlines_strike_and_replace_a_silent_generator_and_a_silent_verifier() -> None:
    m = TokenPoUW("t1", TokenPolicy(ack_timeout_s=1.0, verify_timeout_s=2.0, max_tokens=16))
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0))
    assert m.deadline() == 1.0
    eff = m.apply(Expired(1.5))
    assert Strike("G", "timeout", "timeout_ack") in eff and Cancel("G") in eff
    assert of(eff, Draw)[0] == Draw("generator", 1, frozenset({"G"}))
    generated(m, "H")
    m.apply(Drawn("verifier", ("V",), 10.0))
    eff = m.apply(Expired(12.5))
    assert Strike("V", "timeout", "timeout_verify") in eff
    assert of(eff, Draw) == [Draw("verifier", 1, frozenset({"G", "H", "V"}))]


def test_a_disconnected_generator_is_replaced_without_a_strike() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0))
    eff = m.apply(Failed("G", "disconnected", 0.5))
    assert not of(eff, Strike) and of(eff, Draw)


def test_a_node_whose_router_was_busy_may_be_drawn_again_in_either_role() -> None:
    """A relayed node that had no room (``wire.BUSY``) did nothing: no strike, and unlike a node that failed, it
    is not excluded from the redraw (with few miners it is the one the task must wait for)."""
    m = TokenPoUW("t1", POLICY)
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0))
    eff = m.apply(Failed("G", "miner_error: node busy", 0.1, code=wire.BUSY))
    assert not of(eff, Strike) and of(eff, Draw) == [Draw("generator", 1, frozenset())]
    assert m.apply(Failed("G", "disconnected", 0.1)) == []  # that slot is over
    eff = generated(m, "G")
    assert of(eff, Draw) == [Draw("verifier", 1, frozenset({"G"}))]
    m.apply(Drawn("verifier", ("V",), 0.4))
    eff = m.apply(Failed("V", "miner_error: node busy", 0.5, code=wire.BUSY))
    assert not of(eff, Strike) and of(eff, Draw) == [Draw("verifier", 1, frozenset({"G"}))]
    m.apply(Drawn("verifier", ("V",), 0.6))
    (d,) = of(m.apply(EvidenceIn("V", evidence("V"), 0.7)), Deliver)
    assert d.verdict == "verified" and d.verifiers == ("V",)


def test_no_generator_left_fails_the_task() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    eff = m.apply(Drawn("generator", (), 0.0))
    assert of(eff, FailTask) and m.phase is Phase.DONE


def test_messages_from_strangers_or_out_of_order_are_struck() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0))
    assert of(m.apply(Acked("X", 0.1)), Strike)[0].kind == "replay"
    assert of(m.apply(EvidenceIn("X", evidence("X"), 0.1)), Strike)[0].kind == "replay"
    m.apply(Acked("G", 0.1))
    assert of(m.apply(Acked("G", 0.2)), Strike)[0].kind == "replay"


def test_a_claim_over_max_tokens_is_refused() -> None:
    m = TokenPoUW("t1", TokenPolicy(max_tokens=2))
    m.start()
    eff = generated(m, "G", tokens=(1, 2, 3, 4))
    assert [s.kind for s in of(eff, Strike)] == ["garbage"]


def test_a_prompt_over_the_context_ends_the_task_at_once_without_a_strike() -> None:
    m = TokenPoUW("t1", POLICY)
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0))
    eff = m.apply(Failed("G", "miner_error: too long", 0.1, code="context_length_exceeded"))
    assert of(eff, FailTask) == [FailTask("miner_error: too long", "context_length_exceeded")]
    assert not of(eff, Draw) and not of(eff, Strike) and m.phase is Phase.DONE


def near_ties(node: str, at: tuple[int, ...]) -> wire.Evidence:
    """Evidence where the claimed token is a near tie (margin 0.3) at positions ``at``."""
    ev = evidence(node)
    return ev.model_copy(
        update={
            "picks": tuple(t + 1 if i in at else t for i, t in enumerate(TOKENS)),
            "margins": tuple(0.3 if i in at else 0.0 for i in range(len(TOKENS))),
        }
    )


STRICT_CAP = TokenPolicy(max_tokens=16, tolerance=Tolerance(margin=0.75, cap_fraction=0.0, cap_min=1))


def test_too_many_near_ties_confirmed_is_regenerated_but_nobody_is_slashed() -> None:
    m = TokenPoUW("t1", STRICT_CAP)
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("V",), 0.4))
    eff = m.apply(EvidenceIn("V", near_ties("V", (0, 2)), 0.5))
    assert of(eff, Draw)[0].role == "verifier"  # escalated
    m.apply(Drawn("verifier", ("E1", "E2"), 0.6))
    m.apply(EvidenceIn("E1", near_ties("E1", (0, 2)), 0.7))
    eff = m.apply(EvidenceIn("E2", near_ties("E2", (1, 2)), 0.8))
    assert not of(eff, Strike) and not m.fraud  # hardware noise is not a fraud proof
    assert of(eff, Draw)[0].role == "generator"


def test_too_many_near_ties_refuted_strikes_nobody_and_regenerates() -> None:
    m = TokenPoUW("t1", STRICT_CAP)
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("V",), 0.4))
    m.apply(EvidenceIn("V", near_ties("V", (0, 2)), 0.5))
    m.apply(Drawn("verifier", ("E1", "E2"), 0.6))
    m.apply(EvidenceIn("E1", evidence("E1"), 0.7))
    eff = m.apply(EvidenceIn("E2", near_ties("E2", (3,)), 0.8))
    assert not of(eff, Strike) and not of(eff, Deliver)
    assert of(eff, Draw)[0].role == "generator"


def near_tie(node: str, at: int, margin: float) -> wire.Evidence:
    """Evidence where the claimed token at ``at`` is not the pick but trails it by ``margin`` logits."""
    ev = evidence(node)
    picks = tuple(t + 1 if i == at else t for i, t in enumerate(TOKENS))
    margins = tuple(margin if i == at else 0.0 for i in range(len(TOKENS)))
    return ev.model_copy(update={"picks": picks, "margins": margins})


# numeric profiles as engines.numerics writes them: engine/kernels/weights
P = "llama.cpp-0.3.36/aaaaaaaaaaaa/1111111111111111"
Q = "llama.cpp-0.3.36/bbbbbbbbbbbb/1111111111111111"  # the same weights on other kernels
OTHER_WEIGHTS = "llama.cpp-0.3.36/aaaaaaaaaaaa/2222222222222222"


def claimed_by_profile(profile: str, policy: pouw.TokenPolicy = POLICY) -> TokenPoUW:
    """A task whose generator G, of numeric profile ``profile``, has revealed its claim (next: the verifier)."""
    m = TokenPoUW("t1", policy)
    m.start()
    m.apply(Drawn("generator", ("G",), 0.0, numerics=(profile,)))
    m.apply(Acked("G", 0.1))
    digest, c = commit("G")
    m.apply(Precommitted("G", digest, 0.2))
    m.apply(Revealed("G", c, 0.3))
    return m


def test_a_verifier_of_the_generators_numeric_profile_checks_exactly() -> None:
    """Same numeric profile: bit-identical logits, so a claimed token that is not the pick is rejected even at a
    margin the calibrated tolerance forgives; the same weights on other kernels (or an unknown profile) forgive
    it; a verifier whose profile names other weights checks exactly too (the generator runs another model file)."""
    for verifier_profile, accepted in ((P, False), (Q, True), ("", True), (OTHER_WEIGHTS, False)):
        m = claimed_by_profile(P)
        m.apply(Drawn("verifier", ("V",), 0.4, numerics=(verifier_profile,)))
        eff = m.apply(EvidenceIn("V", near_tie("V", 1, 0.3), 0.5))
        (note,) = [e for e in of(eff, pouw.Note) if e.phase == "evidence"]
        assert note.detail["accepted"] is accepted, verifier_profile
        assert note.detail["tolerance"] == ("calibrated" if accepted else "exact")
        assert bool(of(eff, Deliver)) is accepted  # a rejection escalates instead of delivering


def test_an_exact_accusation_is_not_refuted_by_lenient_rechecks() -> None:
    """An exact check's rejection rechecked by verifiers of other profiles, whose tolerance forgives the near tie:
    inconclusive (regenerate, nobody struck), never a false accusation."""
    m = claimed_by_profile(P)
    m.apply(Drawn("verifier", ("V",), 0.4, numerics=(P,)))
    m.apply(EvidenceIn("V", near_tie("V", 1, 0.3), 0.5))
    m.apply(Drawn("verifier", ("E1", "E2"), 0.6, numerics=(Q, Q)))
    m.apply(EvidenceIn("E1", near_tie("E1", 1, 0.3), 0.7))
    eff = m.apply(EvidenceIn("E2", near_tie("E2", 1, 0.3), 0.8))
    assert of(eff, Strike) == []
    assert of(eff, Deliver) == []
    assert of(eff, Draw) == [Draw("generator", 1, frozenset({"G"}))]  # regenerated elsewhere


def test_an_exact_only_session_checks_every_claim_exactly_whatever_the_profiles() -> None:
    """``TokenPolicy.exact_only`` (a session's ``tolerance: exact``): a near tie the calibrated tolerance forgives
    is rejected even by a verifier of other kernels, and the note says the check was exact."""
    m = claimed_by_profile(P, replace(POLICY, exact_only=True))
    m.apply(Drawn("verifier", ("V",), 0.4, numerics=(Q,)))
    eff = m.apply(EvidenceIn("V", near_tie("V", 1, 0.3), 0.5))
    (note,) = [e for e in of(eff, pouw.Note) if e.phase == "evidence"]
    assert note.detail == note.detail | {"accepted": False, "tolerance": "exact"}
    assert not of(eff, Deliver)


def test_fewer_verifiers_than_the_session_asked_for_give_an_unverified_answer() -> None:
    m = TokenPoUW("t1", replace(POLICY, verifiers=3))
    m.start()
    generated(m, "G")
    m.apply(Drawn("verifier", ("V1", "V2"), 0.4))  # the pool had only two to give
    m.apply(EvidenceIn("V1", evidence("V1"), 0.5))
    (d,) = of(m.apply(EvidenceIn("V2", evidence("V2"), 0.6)), Deliver)
    assert d.verdict == "unverified" and set(d.verifiers) == {"V1", "V2"}
