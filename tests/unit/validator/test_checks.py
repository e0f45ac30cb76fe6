"""Capability checks: each predicate accepts what a correct model says and refuses what a wrong one says."""

from __future__ import annotations

import asyncio

import pytest

from hivemesh.validator.checks import (
    BASIC,
    CHECK_SETS,
    STANDARD,
    Arithmetic,
    Check,
    Fact,
    JsonEcho,
    JsonFields,
    Limits,
    NonEmpty,
    extract_json,
    judge,
)

ALL = [c for cs in CHECK_SETS.values() for c in (*cs.l2, *cs.canaries)]

# what SmolLM2-135M-Instruct (Q4_1, greedy) answers to each standard check, recorded with llama.cpp 0.3.36 built by scripts/setup
# (GGML_LLAMAFILE=OFF: the build changes greedy answers, e.g. 4 + 4 became 10)
RECORDED = {
    "arithmetic 2 + 3": "2 + 3 = 5",
    "arithmetic 3 + 4": "3 + 4 = 7",
    "arithmetic 2 + 2": "2 + 2 = 4",
    "arithmetic 7 + 5": "7 + 5 = 12\n\nThis is",
    "arithmetic 3 * 3": "3 * 3 = 9",
    "arithmetic 10 + 10": "10 + 10 = 20",
    "days in a week": "A week is 7 days.",
    "hours in a day": "The answer is 24.",
    "legs of a spider": "The answer is 8. A spider has 8 legs.",
    "capital of France": "The capital of France is Paris.",
    "json status": 'Here is the JSON object with only the specified JSON object:\n\n```json\n{\n    "status": "ok"\n}\n```\n\n',
    "json name": '{"name": "hivemesh", "ok": true}',
    "json pair": '{"a": 1, "b": 2}',
    "json city": '{\n  "city": "Paris",\n  "country": "FRANCE"\n}',
    "capital of Japan": "The capital of Japan is Tokyo.",
    "capital of Italy": "The capital of Italy is Rome.",
    "capital of Germany": "The capital of Germany is Berlin.",
    "capital of Spain": "The capital of Spain is Madrid.",
    "opposite of hot": "The opposite of hot is cold.",
    "opposite of up": "The opposite of up is down.",
    "opposite of day": "The opposite of day is night.",
    "months in a year": "The answer is 12.",
}


def test_every_check_is_well_formed_and_named_once() -> None:
    for cs in CHECK_SETS.values():
        names = [c.name for c in (*cs.l2, *cs.canaries)]
        assert len(names) == len(set(names))
        assert cs.l2 and cs.canaries
    for c in ALL:
        assert c.prompt.strip() and 1 <= c.max_tokens <= 64
        assert not c.check("") and not c.check("   \n")
        with pytest.raises((AttributeError, TypeError)):
            c.prompt = "changed"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("check", [*STANDARD.l2, *STANDARD.canaries], ids=lambda c: c.name)
def test_the_embedded_models_answers_pass(check: Check) -> None:
    assert check.check(RECORDED[check.name])


@pytest.mark.parametrize(
    ("check", "wrong"),
    [
        (Arithmetic(7, "+", 5), "7 + 5 = 13"),
        (Arithmetic(12, "+", 30), "12 + 30 = 32"),
        (Arithmetic(3, "*", 3), "The answer is 6."),
        (Arithmetic(3, "*", 3), "definitely not what the model said"),
        (STANDARD.canaries[0], "The capital of Japan is Kyoto."),
        (Fact("capital", "?", ("Paris",)), "The Parisian capital is Lyon."),
        (Fact("capital", "?", ("Paris",)), "I cannot say.\nParis"),  # only the first line counts
        (JsonEcho("echo", '{"result": 42}'), '{"result": "42}'),
        (JsonEcho("echo", '{"result": 42}'), '{"result": 41}'),
        (JsonEcho("echo", '{"result": 42}'), "```python\nimport json\n"),
        (JsonFields("city", "?", (("city", "Paris"),)), '{"town": "Paris"}'),
        (JsonFields("city", "?", (("city", "Paris"),)), '["Paris"]'),
    ],
)
def test_wrong_answers_fail(check: Check, wrong: str) -> None:
    assert not check.check(wrong)


@pytest.mark.parametrize(
    ("output", "ok"),
    [
        ("12", True),
        ("The answer is 12.", True),
        ("7 + 5 = 12", True),
        ("twelve", False),
        ("5 + 7 = 11", False),
    ],
)
def test_arithmetic_reads_the_result_not_the_operands(output: str, ok: bool) -> None:
    assert Arithmetic(7, "+", 5).check(output) is ok
    assert Arithmetic(7, "+", 5).expected == 12 and Arithmetic(10, "-", 3).expected == 7


def test_extract_json_bare_fenced_or_none() -> None:
    assert extract_json('Sure: {"a": 1} hope that helps') == {"a": 1}
    assert extract_json('```json\n{\n  "a": 1,\n  "b": [2]\n}\n```') == {"a": 1, "b": [2]}
    for bad in ("no json here", "{not: json}", "} {"):
        with pytest.raises(ValueError):
            extract_json(bad)


def test_basic_checks_accept_any_answer() -> None:
    assert all(c.check("alpha bravo") for c in (*BASIC.l2, *BASIC.canaries))
    assert NonEmpty("x", "y").check(" ok ")


def test_judge_scores_correctness_speed_and_latency() -> None:
    check = Arithmetic(2, "+", 3)
    ok = judge(check, "2 + 3 = 5", tokens_per_s=40.0, latency_ms=200)
    assert ok.passed and ok.correct and "ok" in ok.detail and "40.0 tokens/s" in ok.detail
    wrong = judge(check, "2 + 3 = 6", tokens_per_s=40.0, latency_ms=200)
    assert not wrong.passed and not wrong.correct and "wrong answer" in wrong.detail
    limits = Limits(min_tokens_per_s=10.0, max_latency_ms=1000)
    slow = judge(check, "5", tokens_per_s=2.0, latency_ms=200, limits=limits)
    assert not slow.passed and slow.correct and "slow" in slow.detail
    late = judge(check, "5", tokens_per_s=50.0, latency_ms=5000, limits=limits)
    assert not late.passed and "late" in late.detail
    silent = judge(check, None, error="no miner completed the task (timeout_precommit)")
    assert not silent.passed and not silent.correct and "timeout_precommit" in silent.detail


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:llama_cpp.*")  # the engine's binding, not this check
def test_the_embedded_model_passes_every_standard_check() -> None:
    """The real model, greedy, as a miner runs it: every standard check passes (else honest demo nodes would be
    quarantined by the validator)."""
    pytest.importorskip("llama_cpp")
    from hivemesh.engines.base import GenerationRequest, Piece
    from hivemesh.engines.llamacpp import LlamaCppEngine
    from hivemesh.protocol.wire import ChatMessage, SamplingParams

    async def run() -> dict[str, str]:
        engine = LlamaCppEngine(n_threads=2)
        await engine.start()
        out: dict[str, str] = {}
        try:
            for c in (*STANDARD.l2, *STANDARD.canaries):
                req = GenerationRequest(
                    model=engine.model_id,
                    kind="chat",
                    params=SamplingParams(temperature=0.0, max_tokens=c.max_tokens, seed=7),
                    messages=(ChatMessage(role="user", content=c.prompt),),
                )
                out[c.name] = "".join([ev.text async for ev in engine.generate(req) if isinstance(ev, Piece)])
        finally:
            await engine.close()
        return out

    answers = asyncio.run(run())
    failed = {
        c.name: answers[c.name] for c in (*STANDARD.l2, *STANDARD.canaries) if not c.check(answers[c.name])
    }
    assert not failed
