"""Token-level verification with the embedded model: an honest answer (greedy or sampled) verifies with the
verifier's picks equal to the claimed tokens or within tiny margins, the text rules catch a cut or relabelled
answer, and a different model's view of the same answer is far off."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.perturbed import perturbed_model_path

from hivemesh.engines.base import Finished, GenerationRequest, Piece, TokenChecks, VerifyRequest
from hivemesh.protocol.wire import ChatMessage, SamplingParams, Usage

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:llama_cpp.*"),
]
__all__ = ["perturbed_model_path"]  # the fixture, used below

T = TypeVar("T")
NO_USAGE = Usage(prompt_tokens=0, completion_tokens=0)
NOISE = 0.5  # logits: honest hardware noise stays far below this (see bench/calibrate_tolerance.py)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def engines(perturbed_model_path: Path) -> Iterator[dict[str, Any]]:
    pytest.importorskip("llama_cpp")
    from hivemesh.engines.llamacpp import LlamaCppEngine

    made = {
        "generator": LlamaCppEngine(n_threads=2),
        "verifier": LlamaCppEngine(n_threads=1),
        "perturbed": LlamaCppEngine(perturbed_model_path, n_threads=1),
    }
    for e in made.values():
        run(e.start())
    yield made
    for e in made.values():
        run(e.close())


def chat(content: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(
        model="SmolLM2-135M-Instruct",
        kind="chat",
        params=SamplingParams(**{"max_tokens": 32, **params}),
        messages=(ChatMessage(role="user", content=content),),
    )


def answer(engine: Any, request: GenerationRequest) -> tuple[str, Finished]:
    async def go() -> tuple[str, Finished]:
        text, end = "", None
        async for ev in engine.generate(request):
            if isinstance(ev, Piece):
                text += ev.text
            else:
                end = ev
        assert end is not None
        return text, end

    return run(go())


def verify(engine: Any, request: GenerationRequest, text: str, end: Finished, **changes: Any) -> TokenChecks:
    claim = {"tokens": end.tokens, "output": text, "finish_reason": end.finish_reason, **changes}
    checks: TokenChecks = run(engine.verify(VerifyRequest(request=request, **claim)))
    return checks


def assert_honest(checks: TokenChecks, end: Finished) -> None:
    assert checks.problem == ""
    assert checks.text_ok
    assert len(checks.picks) == len(end.tokens)
    assert max(checks.margins) < NOISE
    assert sum(p != t for p, t in zip(checks.picks, end.tokens, strict=True)) <= 2


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 0.7, "seed": 1234}])
def test_an_honest_answer_verifies(engines: dict[str, Any], params: dict[str, Any]) -> None:
    request = chat("Write two sentences about the sea.", **params)
    text, end = answer(engines["generator"], request)
    assert end.finish_reason == "length" and end.usage.completion_tokens == len(end.tokens) == 32
    checks = verify(engines["verifier"], request, text, end)
    assert_honest(checks, end)
    assert checks.prompt_tokens == end.usage.prompt_tokens and checks.context_length == 2048
    assert all(r >= 1 and lp <= 0.0 for r, lp in zip(checks.ranks, checks.logprobs, strict=True))


def test_the_same_seed_gives_the_same_tokens(engines: dict[str, Any]) -> None:
    request = chat("Name a colour.", temperature=1.0, seed=-1)
    first = answer(engines["generator"], request)
    assert answer(engines["generator"], request) == first  # the second time from the cached prompt prefix


def test_an_answer_ended_by_the_model_verifies_and_a_cut_one_does_not(engines: dict[str, Any]) -> None:
    request = chat("What is the capital of France? Answer in one short sentence.", temperature=0.0)
    text, end = answer(engines["generator"], request)
    assert end.finish_reason == "stop" and len(end.tokens) == end.usage.completion_tokens + 1  # the EOS
    assert_honest(verify(engines["verifier"], request, text, end), end)
    cut = end.tokens[:-2]  # without the EOS and the last word: claimed as a natural stop
    head = engines["verifier"]._llm.detokenize(list(cut)).decode()
    assert not verify(engines["verifier"], request, head, end, tokens=cut).text_ok
    assert not verify(engines["verifier"], request, text + "!", end).text_ok  # text that is not the tokens'
    assert not verify(engines["verifier"], request, text, end, finish_reason="length").text_ok


def test_a_stop_string_answer_verifies_and_an_early_stop_does_not(engines: dict[str, Any]) -> None:
    free = chat("Write two sentences about the sea.", temperature=0.0)
    full, _ = answer(engines["generator"], free)
    stop = full.split()[5]
    request = chat("Write two sentences about the sea.", temperature=0.0, stop=(stop,))
    text, end = answer(engines["generator"], request)
    assert end.finish_reason == "stop" and stop not in text and full.startswith(text + stop)
    assert_honest(verify(engines["verifier"], request, text, end), end)
    early = verify(engines["verifier"], request, text, end, tokens=end.tokens[:-1])
    assert not early.text_ok


def test_the_same_answer_seen_by_another_model_is_far_off(engines: dict[str, Any]) -> None:
    request = chat("Explain in two sentences why the sky is blue.", temperature=0.0)
    text, end = answer(engines["generator"], request)
    checks = verify(engines["perturbed"], request, text, end)
    assert checks.text_ok  # the text is fine, the model is not
    assert max(checks.margins) > 3 * NOISE
    assert sum(p != t for p, t in zip(checks.picks, end.tokens, strict=True)) >= 3


def test_impossible_claims_are_reported_with_empty_columns(engines: dict[str, Any]) -> None:
    request = chat("Hi", temperature=0.0)
    bad = verify(engines["verifier"], request, "x", Finished("length", NO_USAGE, tokens=(1, 10**6)))
    assert (bad.problem, bad.picks, bad.text_ok) == ("bad_token", (), False)
    long = verify(engines["verifier"], request, "x", Finished("length", NO_USAGE, tokens=(42,) * 2048))
    assert (long.problem, long.margins) == ("context", ())
