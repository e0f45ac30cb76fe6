"""Tools, structured output, logprobs and per-request consensus through the official ``openai`` SDK and
langchain-openai, served by instant miners (deterministic: a constrained answer is the schema's example).

Token mode throughout (a generator and a verifier), so every answer here was also verified under its constraint.
The real model's constrained answers are in ``test_openai_structured_real_model.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.base import Event, GenerationRequest
from hivemesh.engines.instant import InstantEngine
from hivemesh.protocol.wire import ModelCard

from ..conftest import API_KEY, LoopThread, Network

MODEL = "instant-echo"
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
TOKEN = SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 3}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 7}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """One token-mode network for the tests that only read answers (the others build their own)."""
    lt = LoopThread()
    shared = Network(lt, tmp_path_factory.mktemp("structured"))
    try:
        shared.start_router(defaults=TOKEN)
        shared.add_miner("a")
        shared.add_miner("b")
        yield shared
    finally:
        try:
            shared.close()
        finally:
            lt.stop()


def post(net: Network, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        net.base_url + path, json=body, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30
    )


# ---------------------------------------------------------------- tools


def test_required_tool_call_comes_back_as_tool_calls(net: Network) -> None:
    r = net.client().chat.completions.create(
        model=MODEL, messages=MSG, tools=[WEATHER, ADD], tool_choice="required"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # the instant engine answers the first alternative
    assert json.loads(call.function.arguments) == {"city": "xxx", "unit": "c"}
    assert r.model_extra is not None and r.model_extra["hivemesh"]["verdict"] == "verified"


def test_named_tool_choice_calls_that_function(net: Network) -> None:
    r = net.client().chat.completions.create(
        model=MODEL,
        messages=MSG,
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
    )
    (call,) = r.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 0})


def test_tool_choice_none_answers_in_text(net: Network) -> None:
    r = net.client().chat.completions.create(model=MODEL, messages=MSG, tools=[WEATHER], tool_choice="none")
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content


def test_streamed_tool_call_arrives_as_delta_tool_calls(net: Network) -> None:
    stream = net.client().chat.completions.create(
        model=MODEL, messages=MSG, tools=[WEATHER], tool_choice="required", stream=True
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert content == "" and finishes == ["tool_calls"]
    (call,) = calls
    assert call.index == 0 and call.function is not None and call.function.name == "get_weather"
    assert json.loads(call.function.arguments or "") == {"city": "xxx", "unit": "c"}


def test_a_tool_choice_naming_no_offered_tool_is_a_400(net: Network) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        net.client().chat.completions.create(
            model=MODEL,
            messages=MSG,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "x"}},
        )
    assert ei.value.body["param"] == "tool_choice"


def test_earlier_calls_and_tool_results_in_the_conversation_are_accepted(net: Network) -> None:
    history = [
        *MSG,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = net.client().chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])  # type: ignore[arg-type]
    assert r.choices[0].message.tool_calls or r.choices[0].message.content


# ---------------------------------------------------------------- response_format


def test_json_schema_response_format(net: Network) -> None:
    r = net.client().chat.completions.create(
        model=MODEL,
        messages=MSG,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    assert json.loads(r.choices[0].message.content or "") == {"name": "", "age": 7}


def test_json_object_response_format_streams(net: Network) -> None:
    stream = net.client().chat.completions.create(
        model=MODEL, messages=MSG, response_format={"type": "json_object"}, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == {}


def test_a_schema_no_grammar_can_express_is_a_400(net: Network) -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}
    with pytest.raises(openai.BadRequestError) as ei:
        net.client().chat.completions.create(
            model=MODEL,
            messages=MSG,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
        )
    assert ei.value.body["param"] == "response_format"


# ---------------------------------------------------------------- logprobs


def test_chat_logprobs_with_top_alternatives(net: Network) -> None:
    r = net.client().chat.completions.create(model=MODEL, messages=MSG, logprobs=True, top_logprobs=1)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    assert all(t.logprob == 0.0 and t.bytes == list(t.token.encode()) for t in lp.content)
    assert all(len(t.top_logprobs) == 1 for t in lp.content)


def test_streamed_logprobs_ride_on_the_finish_chunk(net: Network) -> None:
    chunks = list(net.client().chat.completions.create(model=MODEL, messages=MSG, logprobs=True, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    entries = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert "".join(t.token for t in entries) == text


def test_legacy_completion_logprobs(net: Network) -> None:
    r = net.client().completions.create(model=MODEL, prompt="one two", logprobs=1, max_tokens=5)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and "".join(lp.tokens) == r.choices[0].text
    assert lp.token_logprobs == [0.0] * len(lp.tokens) and lp.text_offset is not None
    assert lp.top_logprobs is not None and all(len(d) == 1 for d in lp.top_logprobs)


def test_logprob_requests_that_could_not_travel_are_400(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(mode="token", verifiers=1, max_tokens=4000))
    network.add_miner("a")
    r = post(
        network,
        "/chat/completions",
        {"model": MODEL, "messages": MSG, "logprobs": True, "top_logprobs": 20, "max_tokens": 100_000},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] in ("top_logprobs", "max_tokens")


# ---------------------------------------------------------------- engines that cannot


class Plain(InstantEngine):
    """An engine that serves neither constraints nor logprobs (as an OpenAI-compatible upstream)."""

    def models(self) -> list[ModelCard]:
        return [c.model_copy(update={"structured": False, "logprobs": False}) for c in super().models()]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        assert request.params.constraint is None and request.params.logprobs is None
        async for ev in super().generate(request):
            yield ev


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [WEATHER]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_a_feature_some_miner_cannot_serve_is_a_400_naming_it(
    network: Network, extra: dict[str, Any], param: str
) -> None:
    network.start_router(defaults=TOKEN)
    network.add_miner("a")
    network.add_miner("plain", engine_obj=Plain())
    r = post(network, "/chat/completions", {"model": MODEL, "messages": MSG, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "not served" in err["message"]


# ---------------------------------------------------------------- per-request consensus (the hivemesh field)


def test_return_all_lists_every_miner_with_its_verdict(net: Network) -> None:
    r = net.client().chat.completions.create(
        model=MODEL,
        messages=MSG,
        extra_body={"hivemesh": {"redundancy": 2, "disagreement_policy": "return_all"}},
    )
    block = (r.model_extra or {})["hivemesh"]
    roles = {a["role"]: a for a in block["answers"]}
    assert roles["generator"]["text"] == r.choices[0].message.content
    assert roles["generator"]["verdict"] == "verified" and roles["verifier"]["verdict"] == "accepted"
    assert {a["node"] for a in block["answers"]} == set(block["miners"])


class Other(InstantEngine):
    """An honest-looking miner whose answers differ from the others' (another model under the same name)."""

    def __init__(self) -> None:
        super().__init__(tokens=5)


def test_fail_policy_refuses_an_answer_the_miners_disputed(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=2, quorum=2, mode="exact"))
    network.add_miner("a")
    network.add_miner("other", engine_obj=Other())
    body = {"model": MODEL, "messages": MSG}
    best = post(network, "/chat/completions", {**body, "hivemesh": {"redundancy": 2}})
    assert best.status_code == 200 and best.json()["hivemesh"]["verdict"] == "disputed"
    every = post(network, "/chat/completions", {**body, "hivemesh": {"disagreement_policy": "return_all"}})
    texts = {a["text"] for a in every.json()["hivemesh"]["answers"]}
    assert len(texts) == 2 and {a["verdict"] for a in every.json()["hivemesh"]["answers"]} <= {
        "dissent",
        "consensus",
    }
    fail = post(network, "/chat/completions", {**body, "hivemesh": {"disagreement_policy": "fail"}})
    assert fail.status_code == 409 and fail.json()["error"]["code"] == "disagreement"


@pytest.mark.parametrize(
    "ext",
    [
        {"redundancy": 0},
        {"redundancy": 17},
        {"redundancy": 1},  # token mode needs a generator and a verifier
        {"disagreement_policy": "vote"},
        {"quorum": 2},
        "three",
    ],
)
def test_bad_consensus_controls_are_400s(net: Network, ext: Any) -> None:
    r = post(net, "/chat/completions", {"model": MODEL, "messages": MSG, "hivemesh": ext})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("hivemesh")


# ---------------------------------------------------------------- langchain-openai


def test_langchain_chat_openai_with_tools_and_structured_output(net: Network) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=net.base_url, api_key=API_KEY, max_retries=0, timeout=30
    )
    assert llm.invoke("hello").content
    msg = llm.bind_tools([WEATHER], tool_choice="required").invoke("Weather in Paris?")
    assert msg.tool_calls[0]["name"] == "get_weather" and msg.tool_calls[0]["args"] == {
        "city": "xxx",
        "unit": "c",
    }
    person = llm.with_structured_output(
        {"title": "person", "description": "A person", **PERSON}, method="json_schema"
    ).invoke("Who?")
    assert person == {"name": "", "age": 7}
    chunks = list(llm.stream("hello"))
    assert "".join(str(c.content) for c in chunks)


def test_async_sdk_streams_a_tool_call_and_json(net: Network) -> None:
    async def go() -> tuple[list[Any], str]:
        async with openai.AsyncOpenAI(base_url=net.base_url, api_key=API_KEY, max_retries=0) as client:
            calls = [
                tc
                async for c in await client.chat.completions.create(
                    model=MODEL, messages=MSG, tools=[WEATHER], tool_choice="required", stream=True
                )
                if c.choices
                for tc in c.choices[0].delta.tool_calls or []
            ]
            r = await client.chat.completions.create(
                model=MODEL, messages=MSG, response_format={"type": "json_object"}
            )
            return calls, r.choices[0].message.content or ""

    calls, text = asyncio.run(go())
    assert [c.function.name for c in calls] == ["get_weather"] and json.loads(text) == {}


def test_session_api_completions_take_the_same_parameters(net: Network) -> None:
    h = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=net.url + "/api/v1", headers=h, timeout=30) as c:
        sid = c.post("/sessions", json={"mode": "token"}).json()["id"]
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
        r = c.post(f"/completions/{sid}", json={"messages": MSG, "response_format": fmt, "logprobs": True})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert (
            json.loads(choice["message"]["content"]) == {"name": "", "age": 7}
            and choice["logprobs"]["content"]
        )
        call = c.post(
            f"/completions/{sid}", json={"messages": MSG, "tools": [ADD], "tool_choice": "required"}
        )
        assert call.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "add"
        refused = c.post(f"/completions/{sid}", json={"prompt": "hi", "tools": [ADD]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools"
