"""Structured output with the real model, end to end: SmolLM2 miners in token mode answer a JSON schema and a tool
call under the grammar, greedy and sampled, and their verifiers (replaying the same grammar mask) verify them; a
miner that ignores the grammar is rejected by its verifier at the first forbidden token, and the user gets the
honest, constrained regeneration instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.base import Event, GenerationRequest
from hivemesh.engines.llamacpp import LlamaCppEngine
from hivemesh.protocol.wire import ModelCard

from ..conftest import Network

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:llama_cpp.*")]

MODEL = "SmolLM2-135M-Instruct"
TOKEN = SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1)
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "country": {"type": "string", "maxLength": 16},
    },
    "required": ["city", "country"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


class IgnoresGrammar(LlamaCppEngine):
    """A cheating generator: it serves constrained tasks as if they were not (and never verifies)."""

    def models(self) -> list[ModelCard]:
        return [c.model_copy(update={"verify": False}) for c in super().models()]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        free = request.params.model_copy(update={"constraint": None})
        async for ev in super().generate(dataclasses.replace(request, params=free)):
            yield ev


def hivemesh(r: Any) -> dict[str, Any]:
    block: dict[str, Any] = (r.model_extra or {})["hivemesh"]
    return block


def ask(client: Any, kind: str, temperature: float, *, logprobs: bool = False) -> Any:
    common: dict[str, Any] = {
        "model": MODEL,
        "temperature": temperature,
        "seed": 5,
        "max_tokens": 32,
        "extra_body": {"hivemesh": {"disagreement_policy": "return_all"}},
    }
    if kind == "json":
        return client.chat.completions.create(
            messages=ASK,
            logprobs=logprobs,  # reported logprobs need the full grammar mask at every position: asked once
            top_logprobs=2 if logprobs else None,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
            **common,
        )
    return client.chat.completions.create(
        messages=WEATHER_ASK, tools=[WEATHER], tool_choice="required", **common
    )


def test_constrained_answers_verify_and_an_unconstrained_claim_is_rejected(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    for name in ("a", "b"):
        network.add_miner(name, engine_obj=LlamaCppEngine(n_threads=1))
    cheater = network.add_miner("cheater", engine_obj=IgnoresGrammar(n_threads=1)).identity.address
    client = network.client()
    honest: set[tuple[str, float]] = set()  # (kind, temperature) answered by an honest generator first
    caught = 0
    plan = [("json", 0.0), ("tool", 0.7), ("json", 0.7), ("tool", 0.0)]
    for i in range(12):
        kind, temperature = plan[i % len(plan)]
        r = ask(client, kind, temperature, logprobs=i == 0)
        block = hivemesh(r)
        # whoever generated first, the user gets a verified answer of the asked shape, from an honest miner
        assert block["verdict"] == "verified" and block["answered_by"] != cheater, block
        if kind == "json":
            assert set(json.loads(r.choices[0].message.content or "")) == {"city", "country"}
            lps = r.choices[0].logprobs
            if i == 0:
                assert (
                    lps is not None
                    and lps.content
                    and all(t.logprob <= 0 and t.top_logprobs for t in lps.content)
                )
                assert "".join(t.token for t in lps.content) == r.choices[0].message.content
        else:
            (tc,) = r.choices[0].message.tool_calls or []
            assert r.choices[0].finish_reason == "tool_calls" and tc.function.name == "get_weather"
            assert set(json.loads(tc.function.arguments)) == {"city"}
        first = block["answers"][0]
        if first["node"] == cheater:  # its unconstrained answer was rejected at a forbidden token
            checks = [a for a in block["answers"] if a["role"] == "verifier" and a["checked"] == cheater]
            assert first["verdict"] == "rejected" and not (first["text"] or "").lstrip().startswith("{")
            assert checks and checks[0]["verdict"] == "rejected: token_mismatch"
            caught += 1
        else:
            honest.add((kind, temperature))
        if caught and {t for _, t in honest} == {0.0, 0.7}:
            break
    assert caught, "the cheater was never drawn as the generator"
    assert {t for _, t in honest} == {0.0, 0.7}, honest
