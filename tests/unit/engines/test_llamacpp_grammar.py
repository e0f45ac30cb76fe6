"""Constrained generation with the embedded model is verified under the same grammar: honest answers (greedy and
sampled) satisfy the schema and pass; an answer the grammar forbids is a token mismatch with a proof position."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from hivemesh.core.verdict import Claim, Tolerance, judge
from hivemesh.engines.base import Finished, GenerationRequest, Piece, VerifyRequest
from hivemesh.engines.grammar import dumps_schema
from hivemesh.protocol.wire import ChatMessage, Constraint, Evidence, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:llama_cpp.*")]

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[Any, Any]]:
    pytest.importorskip("llama_cpp")
    from hivemesh.engines.llamacpp import LlamaCppEngine

    gen, ver = LlamaCppEngine(n_threads=1), LlamaCppEngine(n_threads=1)
    asyncio.run(gen.start())
    asyncio.run(ver.start())
    yield gen, ver
    asyncio.run(gen.close())
    asyncio.run(ver.close())


def request(temperature: float, constrained: bool = True) -> GenerationRequest:
    params = SamplingParams(
        max_tokens=32,
        temperature=temperature,
        seed=11,
        logprobs=2,
        constraint=Constraint(json_schema=dumps_schema(SCHEMA)) if constrained else None,
    )
    msg = ChatMessage(role="user", content="Name the capital of France and its population.")
    return GenerationRequest(model="SmolLM2-135M-Instruct", kind="chat", params=params, messages=(msg,))


def generate(engine: Any, req: GenerationRequest) -> tuple[str, Finished]:
    async def go() -> tuple[str, Finished]:
        text, end = "", None
        async for ev in engine.generate(req):
            if isinstance(ev, Piece):
                text += ev.text
            else:
                end = ev
        assert end is not None
        return text, end

    return asyncio.run(go())


def verdict(verifier: Any, req: GenerationRequest, text: str, end: Finished) -> Any:
    checks = asyncio.run(verifier.verify(VerifyRequest(req, end.tokens, text, end.finish_reason)))
    evidence = Evidence(
        task_id="t",
        node="v",
        picks=checks.picks,
        margins=checks.margins,
        ranks=checks.ranks,
        logprobs=checks.logprobs,
        text_ok=checks.text_ok,
        prompt_tokens=checks.prompt_tokens,
        context_length=checks.context_length,
        problem=checks.problem,
        elapsed_ms=0,
    )
    return judge(Claim(end.tokens, end.finish_reason, req.params.max_tokens), evidence, Tolerance())


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_honest_constrained_answer_satisfies_the_schema_and_verifies(
    engines: tuple[Any, Any], temperature: float
) -> None:
    gen, ver = engines
    req = request(temperature)
    text, end = generate(gen, req)
    value = json.loads(text)
    assert set(value) == {"city", "population"} and isinstance(value["population"], int)
    assert len(end.logprobs) == end.usage.completion_tokens
    assert all(lp.logprob <= 0 and 1 <= len(lp.top) <= 2 for lp in end.logprobs)
    v = verdict(ver, req, text, end)
    assert v.accepted, v


def test_an_answer_the_grammar_forbids_is_rejected_with_a_position(engines: tuple[Any, Any]) -> None:
    gen, ver = engines
    text, end = generate(gen, request(0.0, constrained=False))  # the model's free answer, not JSON
    assert not text.lstrip().startswith("{")
    v = verdict(ver, request(0.0), text, end)
    assert (v.accepted, v.fault, v.reason, v.position) == (False, "generator", "token_mismatch", 0)
