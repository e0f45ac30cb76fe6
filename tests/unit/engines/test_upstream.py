"""The OpenAI-compatible upstream engine against servers that do and do not report usage in streams.

The servers are ``httpx.MockTransport`` handlers that answer as llama-cpp-python's server and vLLM do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from hivemesh.engines.base import Finished, GenerationRequest, Piece
from hivemesh.engines.upstream import UpstreamEngine
from hivemesh.errors import ContextTooLong, UpstreamFailed
from hivemesh.protocol.wire import ChatMessage, SamplingParams

WORDS = ["Hel", "lo", " there", "!"]


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def server(
    *, stream_usage: bool, usage_probe: bool = True
) -> tuple[Callable[..., httpx.Response], list[Any]]:
    seen: list[Any] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "object": "model", "max_model_len": 2048}]})
        body = orjson.loads(request.content)
        seen.append(body)
        if not body.get("stream"):
            if not usage_probe:
                return httpx.Response(500, text="boom")
            msg = {"role": "assistant", "content": "Hel"}
            choice = {"index": 0, "message": msg, "finish_reason": "length"}
            return httpx.Response(
                200,
                json={"choices": [choice], "usage": {"prompt_tokens": 17, "completion_tokens": 1}},
            )
        events = [chunk("", None) | {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        events += [chunk(w) for w in WORDS] + [chunk(None, "stop")]
        if stream_usage:
            events.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}})
        return httpx.Response(200, content=sse(events), headers={"content-type": "text/event-stream"})

    return handle, seen


REQ = GenerationRequest(
    model="m",
    kind="chat",
    params=SamplingParams(max_tokens=16, seed=2**63 - 1),
    messages=(ChatMessage(role="user", content="say hello"),),
)


async def run(engine: UpstreamEngine) -> tuple[str, Finished]:
    await engine.start()
    text, end = "", None
    async for ev in engine.generate(REQ):
        if isinstance(ev, Piece):
            text += ev.text
        else:
            end = ev
    await engine.close()
    assert end is not None
    return text, end


async def test_usage_from_the_stream_when_the_server_sends_it() -> None:
    handle, seen = server(stream_usage=True)
    engine = UpstreamEngine("http://up", transport=httpx.MockTransport(handle))
    text, end = await run(engine)
    assert text == "Hello there!" and end.finish_reason == "stop"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (9, 5)
    assert len(seen) == 1  # no extra request
    assert engine.models()[0].context_length == 2048


async def test_without_stream_usage_tokens_are_counted_and_prompt_asked_once() -> None:
    """llama-cpp-python's server: no usage chunk. Completion tokens = content chunks; prompt from a 1-token call."""
    handle, seen = server(stream_usage=False)
    text, end = await run(UpstreamEngine("http://up", transport=httpx.MockTransport(handle)))
    assert text == "Hello there!"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (17, len(WORDS))
    probe = seen[1]
    assert probe["stream"] is False and probe["max_tokens"] == 1 and probe["messages"] == seen[0]["messages"]
    assert all(0 <= b["seed"] < 2**31 for b in seen)  # every server takes it; never llama.cpp's -1 sentinel


async def test_without_any_usage_the_prompt_is_estimated() -> None:
    handle, _ = server(stream_usage=False, usage_probe=False)
    _, end = await run(UpstreamEngine("http://up", transport=httpx.MockTransport(handle)))
    assert end.usage.prompt_tokens == 3  # "say hello": 9 bytes at 4 bytes per token, rounded up
    assert end.usage.completion_tokens == len(WORDS)


async def test_a_context_refusal_is_context_too_long_and_other_errors_fail() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if b"long" in request.content:
            return httpx.Response(400, text="Requested tokens (5000) exceed context window of 4096")
        return httpx.Response(503, text="busy")

    engine = UpstreamEngine("http://up", transport=httpx.MockTransport(handle))
    await engine.start()
    long = GenerationRequest(model="m", kind="completion", params=SamplingParams(), prompt="long " * 10)
    with pytest.raises(ContextTooLong) as ei:
        async for _ in engine.generate(long):
            pass
    assert ei.value.message.startswith("This model's maximum context length is 4096")
    with pytest.raises(UpstreamFailed):
        async for _ in engine.generate(REQ):
            pass
    await engine.close()


async def test_an_upstream_that_goes_down_fails_the_task_with_a_clear_error() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        raise httpx.ConnectError("connection refused")

    engine = UpstreamEngine("http://up", transport=httpx.MockTransport(handle))
    await engine.start()
    with pytest.raises(UpstreamFailed, match="upstream http://up/v1 failed"):
        async for _ in engine.generate(REQ):
            pass
    await engine.close()
