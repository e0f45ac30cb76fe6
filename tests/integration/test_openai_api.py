"""The OpenAI surface, driven by the official ``openai`` SDK against a real router and real miners on loopback."""

from __future__ import annotations

import httpx
import openai
import pytest

from hivemesh.config import SessionDefaults

from ..conftest import API_KEY, Network

MODEL = "instant-echo"


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router()
    network.add_miner("a")
    network.add_miner("b")
    return network


def test_models_lists_what_connected_miners_serve(net: Network) -> None:
    ids = [m.id for m in net.client().models.list()]
    assert ids == [MODEL]
    assert net.client().models.retrieve(MODEL).id == MODEL


def test_chat_completion_answers_with_usage_and_verification(net: Network) -> None:
    raw = net.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], seed=7, max_tokens=5
    )
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    text = r.choices[0].message.content
    assert text and len(text.split()) == 5
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == 2
    assert r.usage.total_tokens == 7
    block = r.model_extra["hivemesh"]
    assert block["task_id"] == raw.headers["x-hivemesh-task-id"]
    assert block["verdict"] == "unverified"  # k=1, mode none: nothing to agree with
    assert len(block["miners"]) == 1
    assert raw.headers["x-hivemesh-verdict"] == "unverified"
    assert len(raw.headers["x-request-id"]) >= 16


def test_same_seed_same_text_and_other_seed_differs(net: Network) -> None:
    c = net.client()
    msgs = [{"role": "user", "content": "tell me something"}]
    a = c.chat.completions.create(model=MODEL, messages=msgs, seed=1, temperature=0)
    b = c.chat.completions.create(model=MODEL, messages=msgs, seed=1, temperature=0)
    d = c.chat.completions.create(model=MODEL, messages=msgs, seed=2, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != d.choices[0].message.content


def test_stream_with_usage_ends_with_usage_chunk_then_done(net: Network) -> None:
    stream = net.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=6,
        seed=3,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 6
    assert last.model_extra["hivemesh"]["verdict"] == "unverified"


def test_stream_raw_sse_ends_with_done(net: Network) -> None:
    with httpx.stream(
        "POST",
        net.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {API_KEY}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)


def test_legacy_completions(net: Network) -> None:
    r = net.client().completions.create(model=MODEL, prompt="one two three", max_tokens=4, seed=1)
    assert r.object == "text_completion"
    assert len(r.choices[0].text.split()) == 4
    assert r.usage.prompt_tokens == 3
    chunks = list(net.client().completions.create(model=MODEL, prompt="one", max_tokens=3, stream=True))
    assert len("".join(c.choices[0].text for c in chunks if c.choices).split()) == 3


def test_unknown_model_is_404_in_openai_shape(net: Network) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        net.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    err = ei.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert set(ei.value.response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "instant-echo"}', "messages"),
        (b'{"model": "instant-echo", "messages": [], "n": 1}', "messages"),
        (b'{"model": "instant-echo", "messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
        (
            b'{"model": "instant-echo", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            "temperature",
        ),
        (b'{"model": "instant-echo", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
        (b"[1, 2]", None),
    ],
)
def test_malformed_body_is_400(net: Network, body: bytes, param: str | None) -> None:
    r = httpx.post(
        net.base_url + "/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert r.headers["x-request-id"]


def test_missing_or_wrong_key_is_401(net: Network) -> None:
    r = httpx.post(net.base_url + "/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=net.base_url, api_key="hm-wrong", max_retries=0).models.list()


def test_no_miner_left_is_503_with_retry_after(net: Network) -> None:
    net.kill_miner("a")
    net.kill_miner("b")
    net.wait_miners(0)
    with pytest.raises(openai.APIStatusError) as ei:
        net.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert ei.value.status_code == 503
    assert ei.value.response.headers["retry-after"]
    assert ei.value.body["code"] == "no_miner_available"


def test_unknown_route_and_method_in_openai_shape(net: Network) -> None:
    r = httpx.get(net.url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(net.base_url + "/chat/completions", headers={"authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 405 and "error" in r.json()


def test_request_id_is_echoed(net: Network) -> None:
    r = httpx.get(
        net.base_url + "/models", headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "abc-123"}
    )
    assert r.headers["x-request-id"] == "abc-123"


def test_redundant_exact_session_verifies(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=3, quorum=2, mode="exact"))
    for name in "abc":
        network.add_miner(name)
    r = network.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    block = r.model_extra["hivemesh"]
    assert block["verdict"] == "verified"
    assert len(block["miners"]) == 3
    assert len(block["consensus"]) >= 2
    assert block["dissent"] == []
