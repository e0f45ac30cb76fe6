"""A restarted router remembers the models it served: until a miner for one is back, a request for it is a 503
with ``retry-after`` (its miners are coming back, so the SDK retries), never a 404 (which tells it to give up)."""

from __future__ import annotations

import httpx

from tests.conftest import API_KEY, Network

H = {"authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "instant-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_restarted_router_answers_503_for_a_model_it_served(network: Network) -> None:
    network.start_router()
    network.add_miner("a")
    assert (
        httpx.post(network.base_url + "/chat/completions", json=CHAT, headers=H, timeout=30).status_code
        == 200
    )
    network.kill_miner("a")
    network.stop_router()

    network.start_router()  # same data directory: a new process would read the same store
    r = httpx.post(network.base_url + "/chat/completions", json=CHAT, headers=H, timeout=30)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] and r.json()["error"]["code"] == "no_miner_available"
    model = httpx.get(network.base_url + "/models/instant-echo", headers=H, timeout=30)
    assert model.status_code == 200 and model.json()["hivemesh"]["miners"] == 0
    unknown = httpx.post(network.base_url + "/chat/completions", json={**CHAT, "model": "never"}, headers=H)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

    network.add_miner("b")  # a miner for it is back
    r = httpx.post(network.base_url + "/chat/completions", json=CHAT, headers=H, timeout=30)
    assert r.status_code == 200, r.text
