"""Output constraints become grammars deterministically, and the instant engine answers them trivially."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hivemesh.engines.base import Finished, GenerationRequest, Piece, VerifyRequest
from hivemesh.engines.grammar import check, dumps_schema, gbnf, schema_example
from hivemesh.engines.instant import InstantEngine
from hivemesh.protocol.wire import ChatMessage, Constraint, SamplingParams

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["city", "n"],
}


def test_the_grammar_is_a_function_of_the_constraint() -> None:
    pytest.importorskip("llama_cpp")
    c = Constraint(json_schema=dumps_schema(CITY))
    assert gbnf(c) == gbnf(Constraint(json_schema=dumps_schema(CITY)))
    assert 'city-kv "," space n-kv' in gbnf(c)  # properties in the caller's order


def test_free_text_is_an_alternative_only_when_allowed() -> None:
    pytest.importorskip("llama_cpp")
    strict = gbnf(Constraint(json_schema=dumps_schema(CITY)))
    loose = gbnf(Constraint(json_schema=dumps_schema(CITY), text_allowed=True))
    assert "hivemesh-free-text" not in strict
    assert "root ::= hivemesh-json | hivemesh-free-text" in loose


def test_a_schema_the_converter_cannot_take_is_named() -> None:
    pytest.importorskip("llama_cpp")
    bad = Constraint(json_schema=dumps_schema({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}))
    assert check(bad) is not None
    assert check(Constraint(json_schema=dumps_schema(CITY))) is None


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        (CITY, {"city": "", "n": 0}),
        ({"oneOf": [{"const": "a"}, {"type": "integer"}]}, "a"),
        ({"type": "array", "items": {"enum": [3, 4]}, "minItems": 2}, [3, 3]),
        ({"type": "object"}, {}),
    ],
)
def test_schema_example(schema: dict[str, Any], value: Any) -> None:
    assert schema_example(schema) == value


def test_instant_engine_answers_a_constraint_and_verifies_it() -> None:
    async def go() -> None:
        engine = InstantEngine()
        params = SamplingParams(
            max_tokens=64, constraint=Constraint(json_schema=dumps_schema(CITY)), logprobs=1
        )
        req = GenerationRequest(
            model="instant-echo",
            kind="chat",
            params=params,
            messages=(ChatMessage(role="user", content="hi"),),
        )
        text, end = "", None
        async for ev in engine.generate(req):
            if isinstance(ev, Piece):
                text += ev.text
            else:
                end = ev
        assert isinstance(end, Finished)
        assert json.loads(text) == {"city": "", "n": 0}
        assert len(end.logprobs) == len(text) and end.logprobs[0].top[0].token == "{"
        checks = await engine.verify(VerifyRequest(req, end.tokens, text, end.finish_reason))
        assert checks.text_ok and max(checks.margins) == 0.0

    asyncio.run(go())
