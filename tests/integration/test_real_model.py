"""The embedded engine through the network: sampling parameters are honoured by the real model."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.llamacpp import LlamaCppEngine

from ..conftest import Network

MODEL = "SmolLM2-135M-Instruct"
pytestmark = pytest.mark.slow


@pytest.fixture
def net(network: Network) -> Iterator[Network]:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    network.add_miner("llama", engine_obj=LlamaCppEngine(n_threads=2))
    yield network


def test_greedy_with_seed_is_reproducible_and_usage_is_exact(net: Network) -> None:
    c = net.client()
    msgs = [{"role": "user", "content": "Name a fruit."}]
    a = c.chat.completions.create(model=MODEL, messages=msgs, temperature=0, seed=3, max_tokens=20)
    b = c.chat.completions.create(model=MODEL, messages=msgs, temperature=0, seed=3, max_tokens=20)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens <= 20
    assert a.usage.prompt_tokens > 5


def test_sampling_with_the_same_seed_repeats_and_another_seed_differs(net: Network) -> None:
    c = net.client()
    msgs = [{"role": "user", "content": "Write one sentence about the sea."}]
    outs = [
        c.chat.completions.create(
            model=MODEL, messages=msgs, temperature=1.2, top_p=0.95, seed=s, max_tokens=30
        )
        .choices[0]
        .message.content
        for s in (5, 5, 6)
    ]
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_max_completion_tokens_and_stop_are_honoured(net: Network) -> None:
    c = net.client()
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 50, separated by commas."}],
        temperature=0,
        max_completion_tokens=8,
    )
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
    r = c.completions.create(model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=30, stop=[" 8"])
    assert r.choices[0].finish_reason == "stop"
    assert " 8" not in r.choices[0].text and "7" in r.choices[0].text


def test_stream_delivers_the_first_token_long_before_the_last(net: Network) -> None:
    stream = net.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a short story about a cat."}],
        temperature=0,
        seed=1,
        max_tokens=80,
        stream=True,
        stream_options={"include_usage": True},
    )
    t0 = time.monotonic()
    times: list[float] = []
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic() - t0)
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens > 20
    assert len(times) > 10
    assert times[0] < (times[-1] - times[0]) / 2  # tokens arrive as generated, not in one burst
