"""Output constraints become grammars deterministically, and the instant engine answers them trivially."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from hivemesh.core.sampling import Sampler, check, masked, pick
from hivemesh.engines.base import Finished, GenerationRequest, Piece, VerifyRequest
from hivemesh.engines.grammar import check as check_constraint
from hivemesh.engines.grammar import constrained_row, dumps_schema, gbnf, schema_example
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
    assert check_constraint(bad) is not None
    assert check_constraint(Constraint(json_schema=dumps_schema(CITY))) is None


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


class FixedGrammar:
    """A grammar that allows a fixed set of tokens (the shape of ``GrammarMask`` that ``constrained_row`` uses)."""

    def __init__(self, allowed: np.ndarray) -> None:
        self.mask = allowed
        self.full = 0

    def allowed(self) -> np.ndarray:
        self.full += 1
        return self.mask

    def allowed_among(self, ids: np.ndarray) -> np.ndarray:
        return self.mask[ids]


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.5])
@pytest.mark.parametrize("share", [0.9, 0.2, 0.002])
def test_the_shortlist_picks_and_checks_as_the_full_mask_does(temperature: float, share: float) -> None:
    rng = np.random.default_rng(int(temperature * 10 + share * 1000))
    sampler = Sampler(temperature=temperature, seed=9)
    for position in range(20):
        logits = (rng.standard_normal(4096) * 3).astype(np.float32)
        grammar = FixedGrammar(rng.random(4096) < share)
        full = masked(logits, grammar.mask)
        claims = [int(np.argmax(full)), int(rng.integers(4096)), int(np.argsort(-full)[1])]
        for claimed in claims:
            short = constrained_row(logits, grammar, sampler, claimed=claimed)  # type: ignore[arg-type]
            a, b = check(full, claimed, sampler, position), check(short, claimed, sampler, position)
            assert (a.pick, a.margin) == (b.pick, b.margin)
            assert pick(full, sampler, position) == pick(short, sampler, position)


def test_ties_across_the_shortlist_edge_pick_as_the_full_mask_does() -> None:
    logits = np.zeros(4096, dtype=np.float32)
    logits[100:400] = 5.0  # 300 tied best tokens: some are left out of a 256-token shortlist
    grammar = FixedGrammar(np.ones(4096, dtype=bool))
    for temperature in (0.0, 0.7):
        sampler = Sampler(temperature=temperature, seed=3)
        short = constrained_row(logits, grammar, sampler)  # type: ignore[arg-type]
        assert pick(short, sampler, 0) == pick(masked(logits, grammar.mask), sampler, 0)
