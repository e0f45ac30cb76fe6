"""``--engine openai`` in front of a real OpenAI-compatible server: llama-cpp-python's own ``llama_cpp.server``
(which sends no usage in streams) serving the embedded SmolLM2 model. Miners relay it; the router serves chat
completions through them in mode ``none`` and, with two miners agreeing exactly at temperature 0, mode ``exact``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from hivemesh.config import SessionDefaults
from tests.conftest import API_KEY, Network

pytestmark = pytest.mark.slow
ALIAS = "smollm2-upstream"
H = {"authorization": f"Bearer {API_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    from hivemesh.engines.llamacpp import default_model_path

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path())]
    cmd += ["--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    cmd += ["--interrupt_requests", "False"]  # its default cuts a running stream short for the next request
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:  # readiness: the server answers its model list
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llama_cpp.server did not start within 120 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def chat(net: Network, **extra: object) -> httpx.Response:
    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "seed": 1,
        "max_tokens": 12,
        **extra,
    }
    return httpx.post(net.base_url + "/chat/completions", json=body, headers=H, timeout=120)


@pytest.mark.parametrize("mode", ["none", "exact"])
def test_a_miner_in_front_of_llama_cpp_server(network: Network, llama_server: str, mode: str) -> None:
    k = 1 if mode == "none" else 2
    network.start_router(defaults=SessionDefaults(redundancy=k, quorum=k, mode=mode))  # type: ignore[arg-type]
    for i in range(k):
        network.add_miner(f"m{i}", engine="openai", upstream_url=llama_server, model_id=ALIAS)
    r = chat(network)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["choices"][0]["message"]["content"].strip()  # what SmolLM2-135M says; its facts vary
    assert j["usage"]["completion_tokens"] > 0 and j["usage"]["prompt_tokens"] > 0
    assert j["hivemesh"]["verdict"] == ("unverified" if mode == "none" else "verified")
    streamed = chat(network, stream=True)  # the upstream sends no usage in its stream: counted by the engine
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
