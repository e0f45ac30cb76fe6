"""The edges of the OpenAI surface: parameters the network does not serve, prompt lists, base64 embeddings, model
lookup, context length, seeds over the whole 64-bit range, the stream's last chunk, and Session API errors.

Each test drives a real router and real miners on loopback with the official ``openai`` SDK (or raw HTTP where the
SDK would hide what is sent)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.base import Event, GenerationRequest
from hivemesh.engines.instant import InstantEngine
from hivemesh.errors import ContextTooLong
from hivemesh.protocol.wire import MAX_FRAME, ModelCard

from ..conftest import API_KEY, Network

MODEL = "instant-echo"
H = {"authorization": f"Bearer {API_KEY}"}
MSG = [{"role": "user", "content": "hello"}]


class FakeEmbedder:
    """Three-dimensional embeddings, fixed per text: enough to check the wire format."""

    model_id = "all-MiniLM-L6-v2"

    async def aembed(self, texts: list[str]) -> np.ndarray:
        return np.array([[0.5, -1.25, float(len(t))] for t in texts], dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(t.split()) for t in texts)


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(embedder=FakeEmbedder())
    network.add_miner("a")
    return network


def post(net: Network, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(net.base_url + path, json=body, headers=H, timeout=30)


# ---------------------------------------------------------------- 1. unserved parameters are refused, by name

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # without tools
        ({"functions": [TOOL["function"]]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
        ({"n": 2}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ],
)
def test_unserved_chat_parameter_is_a_400_naming_it(net: Network, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        net.client().chat.completions.create(model=MODEL, messages=MSG, **extra)  # type: ignore[call-overload]
    err = ei.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert "not" in err["message"] and param in err["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"echo": True}, "echo"), ({"best_of": 3}, "best_of"), ({"n": 3}, "n")],
)
def test_unserved_completion_parameter_is_a_400_naming_it(
    net: Network, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        net.client().completions.create(model=MODEL, prompt="one two", **extra)
    assert ei.value.body["param"] == param


def test_neutral_values_and_unknown_fields_are_accepted(net: Network) -> None:
    r = net.client().chat.completions.create(
        model=MODEL,
        messages=MSG,
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        logprobs=False,
        top_logprobs=0,
        n=1,
        extra_body={"some_vendor_field": {"x": 1}},
    )
    assert r.choices[0].message.content


# ---------------------------------------------------------------- 2. prompt lists, base64 embeddings, model lookup


def test_completion_prompt_as_a_list_of_one(net: Network) -> None:
    one = net.client().completions.create(model=MODEL, prompt=["one two three"], seed=4, max_tokens=3)
    same = net.client().completions.create(model=MODEL, prompt="one two three", seed=4, max_tokens=3)
    assert one.choices[0].text == same.choices[0].text and one.usage.prompt_tokens == 3


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2, 3], [], ""])
def test_unservable_prompts_are_400_naming_prompt(net: Network, prompt: Any) -> None:
    r = post(net, "/completions", {"model": MODEL, "prompt": prompt})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "prompt" and err["message"]


def test_embeddings_as_floats_and_as_little_endian_float32_base64(net: Network) -> None:
    c = net.client()
    floats = c.embeddings.create(model="all-MiniLM-L6-v2", input=["hi there", "x"], encoding_format="float")
    assert floats.data[0].embedding == [0.5, -1.25, 8.0]
    raw = post(net, "/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi", "encoding_format": "base64"})
    b64 = raw.json()["data"][0]["embedding"]
    assert isinstance(b64, str)
    assert np.frombuffer(base64.b64decode(b64), dtype="<f4").tolist() == [0.5, -1.25, 2.0]
    # the SDK asks for base64 by default and decodes it itself
    assert c.embeddings.create(model="all-MiniLM-L6-v2", input="hi").data[0].embedding == [0.5, -1.25, 2.0]
    r = post(net, "/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi", "dimensions": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_every_listed_model_can_be_retrieved(net: Network) -> None:
    c = net.client()
    ids = [m.id for m in c.models.list()]
    assert set(ids) == {MODEL, "all-MiniLM-L6-v2"}
    for mid in ids:
        assert c.models.retrieve(mid).id == mid
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


# ---------------------------------------------------------------- 3. context length


class SmallContextEngine(InstantEngine):
    """A 100-token model that, like llama.cpp, refuses a prompt longer than its context; counts its calls."""

    CONTEXT = 100

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.model, engine=self.name, context_length=self.CONTEXT)]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.calls += 1
        text = request.prompt or "".join(m.content for m in request.messages)
        if len(text) // 4 >= self.CONTEXT:
            raise ContextTooLong(
                f"This model's maximum context length is {self.CONTEXT} tokens; the prompt has {len(text) // 4}.",
                param="messages",
            )
        async for event in super().generate(request):
            yield event


@pytest.fixture
def small(network: Network) -> tuple[Network, SmallContextEngine]:
    network.start_router()
    engine = SmallContextEngine()
    network.add_miner("small", engine_obj=engine)
    return network, engine


def test_prompt_that_cannot_fit_is_refused_before_any_miner(
    small: tuple[Network, SmallContextEngine],
) -> None:
    net, engine = small
    huge = "word " * (SmallContextEngine.CONTEXT * 128 // 5 + 10)  # over 128 bytes per token of context
    with pytest.raises(openai.BadRequestError) as ei:
        net.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": huge}])
    assert ei.value.body["code"] == "context_length_exceeded" and ei.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as ei:
        net.client().completions.create(model=MODEL, prompt=huge, stream=True)
    assert ei.value.body["code"] == "context_length_exceeded" and ei.value.body["param"] == "prompt"
    assert engine.calls == 0


def test_miners_own_context_error_reaches_the_user_as_400(small: tuple[Network, SmallContextEngine]) -> None:
    net, engine = small
    long = "x" * 1000  # under the router's bound, over the miner's context
    with pytest.raises(openai.BadRequestError) as ei:
        net.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}])
    assert ei.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 100" in ei.value.body["message"]
    assert engine.calls >= 1
    lines = []
    with httpx.stream(
        "POST",
        net.base_url + "/chat/completions",
        headers=H,
        json={"model": MODEL, "messages": [{"role": "user", "content": long}], "stream": True},
        timeout=30,
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert "context_length_exceeded" in lines[-1]


def test_body_beyond_the_miner_frame_never_reaches_a_miner(net: Network) -> None:
    big = "y" * (MAX_FRAME // 2 + 10)
    r = post(net, "/completions", {"model": MODEL, "prompt": "x", "stop": [big]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(
        net.base_url + "/completions",
        content=b'{"model": "instant-echo", "prompt": "' + b"z" * (3 * MAX_FRAME) + b'"}',
        headers={**H, "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert net.client().chat.completions.create(model=MODEL, messages=MSG).choices  # the miner is still there
    assert len(net.service.hub.links) == 1


# ---------------------------------------------------------------- 4. seeds


@pytest.fixture
def exact(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=2, quorum=2, mode="exact"))
    network.add_miner("a")
    network.add_miner("b")
    return network


@pytest.mark.parametrize("seed", [-1, 2**32 - 1, 2**63 - 1, 2**63 + 5, 2**64 - 1, -(2**63)])
def test_any_64_bit_seed_is_served_verified_and_recorded(exact: Network, seed: int) -> None:
    raw = exact.client().chat.completions.with_raw_response.create(model=MODEL, messages=MSG, seed=seed)
    r = raw.parse()
    assert r.model_extra["hivemesh"]["verdict"] == "verified"
    tid, sid = raw.headers["x-hivemesh-task-id"], raw.headers["x-hivemesh-session-id"]
    task = httpx.get(f"{exact.url}/api/v1/tasks/{sid}/{tid}", headers=H, timeout=10)
    assert task.status_code == 200, task.text
    assert task.json()["seed"] == seed % 2**63
    again = exact.client().chat.completions.create(model=MODEL, messages=MSG, seed=seed % 2**63)
    assert again.choices[0].message.content == r.choices[0].message.content


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_seed_out_of_range_is_400_naming_seed(net: Network, seed: int) -> None:
    r = post(net, "/chat/completions", {"model": MODEL, "messages": MSG, "seed": seed})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


# ---------------------------------------------------------------- 5. the stream's last chunk


def test_stream_without_usage_follows_openais_documented_loop(net: Network) -> None:
    stream = net.client().chat.completions.create(model=MODEL, messages=MSG, stream=True, max_tokens=4)
    text = ""
    chunks = []
    for chunk in stream:  # OpenAI's own example: no guard on choices
        text += chunk.choices[0].delta.content or ""
        chunks.append(chunk)
    assert len(text.split()) == 4
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length" and last.choices[0].delta.content is None
    assert last.model_extra["hivemesh"]["verdict"] == "unverified"
    assert all(c.usage is None for c in chunks)
    legacy = list(net.client().completions.create(model=MODEL, prompt="one", stream=True, max_tokens=2))
    assert all(len(c.choices) == 1 for c in legacy) and "hivemesh" in legacy[-1].model_extra


def test_stream_with_usage_keeps_the_usage_chunk_without_choices(net: Network) -> None:
    chunks = list(
        net.client().chat.completions.create(
            model=MODEL, messages=MSG, stream=True, stream_options={"include_usage": True}, max_tokens=3
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].model_extra["hivemesh"]["verdict"] == "unverified"
    assert chunks[-2].choices[0].finish_reason == "length"


# ---------------------------------------------------------------- 6. Session API errors


def test_session_completion_errors_are_400s_like_the_openai_route(net: Network) -> None:
    with httpx.Client(base_url=net.url + "/api/v1", headers=H, timeout=30) as c:
        sid = c.post("/sessions", json={"name": "e"}).json()["id"]
        r = c.post(f"/completions/{sid}", json={"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
        r = c.post(f"/completions/{sid}", json={"messages": MSG, "stop": ["a", "b", "c", "d", "e"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
        r = c.post(f"/completions/{sid}", json={"prompt": ""})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "empty" in r.json()["error"]["message"]
        r = c.post(f"/completions/{sid}", json={"prompt": "hi", "seed": 2**70})
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
        assert c.post(f"/completions/{sid}", json={"prompt": "hi", "seed": -1}).status_code == 200


@pytest.mark.parametrize("field", ["ack_timeout_s", "precommit_timeout_s", "commit_timeout_s"])
@pytest.mark.parametrize("value", [0.0001, 0.0, -1, 10**9])
def test_absurd_session_timeouts_are_refused_at_creation(net: Network, field: str, value: float) -> None:
    r = httpx.post(net.url + "/api/v1/sessions", json={field: value}, headers=H, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and "pydantic" not in err["message"]
