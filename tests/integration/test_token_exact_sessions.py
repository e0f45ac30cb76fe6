"""A session with ``tolerance: exact``: every check of its answers is exact, so no generator can get the calibrated
tolerance by advertising an unknown numeric profile (the "profile downgrade": a cheater that hides its profile
would otherwise be checked leniently, and near-tie swaps would pass). Real router, instant-engine miners that
advertise chosen profiles, the Session API over HTTP."""

from __future__ import annotations

import httpx

from hivemesh.config import SessionDefaults
from hivemesh.engines.instant import InstantEngine
from tests.conftest import API_KEY, Network

TOKEN = SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1)
P = "llama.cpp-0.3.36/aaaaaaaaaaaa/1111111111111111"
Q = "llama.cpp-0.3.36/bbbbbbbbbbbb/1111111111111111"  # the same weights on other kernels
AUTH = {"authorization": f"Bearer {API_KEY}"}


def session(network: Network, **body: object) -> httpx.Response:
    return httpx.post(f"{network.url}/api/v1/sessions", headers=AUTH, json={"mode": "token", **body})


def roles(network: Network, hm: dict[str, object]) -> dict[str, str]:
    task = httpx.get(f"{network.url}/api/v1/tasks/{hm['session_id']}/{hm['task_id']}", headers=AUTH).json()
    return {a["node"]: a["role"] for a in task["miners"]}


def test_an_exact_session_uses_only_profiled_generators_and_verifiers_of_their_profile(
    network: Network,
) -> None:
    network.start_router(defaults=TOKEN)
    profiles = {"p1": P, "p2": P, "unknown": "", "q": Q}
    address = {
        name: network.add_miner(name, engine_obj=InstantEngine(tokens=10, numerics=prof)).identity.address
        for name, prof in profiles.items()
    }
    exact_nodes = {address["p1"], address["p2"]}
    r = session(network, tolerance="exact")
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["tolerance"] == "exact"
    assert httpx.get(f"{network.url}/api/v1/sessions/{sid}", headers=AUTH).json()["tolerance"] == "exact"
    client = network.client(default_headers={"x-hivemesh-session": sid})
    for seed in range(8):
        r2 = client.chat.completions.create(
            model="instant-echo", messages=[{"role": "user", "content": "hi"}], temperature=0, seed=seed
        )
        hm = r2.model_extra["hivemesh"]
        assert hm["verdict"] == "verified", (roles(network, hm), address)
        took = roles(network, hm)
        assert set(took) == exact_nodes, (seed, took)  # never the unprofiled node nor the other kernels
        assert sorted(took.values()) == ["generator", "verifier"]
    # a calibrated session (the default) draws from every miner
    default = network.client()
    seen: set[str] = set()
    for seed in range(24):
        r3 = default.chat.completions.create(
            model="instant-echo", messages=[{"role": "user", "content": "hi"}], temperature=0, seed=seed
        )
        seen |= set(roles(network, r3.model_extra["hivemesh"]))
    assert seen - exact_nodes  # the unprofiled or other-kernel nodes took part too


def test_an_exact_session_without_profiled_miners_is_a_503_that_says_why(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    for name in ("a", "b"):
        network.add_miner(name, engine_obj=InstantEngine(tokens=10))
    sid = session(network, tolerance="exact").json()["id"]
    r = httpx.post(
        f"{network.url}/v1/chat/completions",
        headers=AUTH | {"x-hivemesh-session": sid},
        json={"model": "instant-echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503, r.text
    assert "numeric profile" in r.json()["error"]["message"] and r.headers.get("retry-after")


def test_an_unknown_tolerance_is_a_400_naming_it(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    r = session(network, tolerance="loose")
    assert r.status_code == 400 and r.json()["error"]["param"] == "tolerance", r.text
