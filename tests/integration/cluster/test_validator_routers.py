"""Validators with several routers on one database: the ``oracle`` lease picks the network's leading validator,
and nothing else. A router whose validator follows (the leader works through another router) serves its users as
a router without a validator does; the router the leader works through keeps user work for validated nodes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from hivemesh.identity import Identity
from hivemesh.validator.agent import ValidatorAgent
from hivemesh.validator.config import ValidatorConfig

from ...conftest import API_KEY, Network

MODEL = "instant-echo"


def ask(net: Network) -> httpx.Response:
    return httpx.post(
        f"{net.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {API_KEY}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


def test_a_following_validator_does_not_keep_its_router_from_users(
    two: tuple[Network, Network], tmp_path: Path
) -> None:
    a, b = two
    shared = f"sqlite+aiosqlite:///{tmp_path / 'network.db'}"  # one store: sessions, tasks, leases
    leader, follower = Identity.generate(), Identity.generate()
    allowed = (leader.address, follower.address)
    for net in (a, b):
        net.start_router(database_url=shared, validators=allowed)
    a.add_miner("on-a")
    b.add_miner("on-b")

    async def validators() -> tuple[ValidatorAgent, ValidatorAgent]:
        return ValidatorAgent(a.url, leader, ValidatorConfig()), ValidatorAgent(
            b.url, follower, ValidatorConfig()
        )

    va, vb = a.lt.run(validators())
    try:
        assert a.lt.run(va.take_lead())
        assert not a.lt.run(vb.take_lead())  # the lease is the network's: B's validator follows

        r = ask(b)
        assert r.status_code == 200, r.text  # B's node serves B's users, unvalidated as before any validator
        assert a.service.hub.validation_until > time.time()  # A, where the leader works: validated nodes only
        assert b.service.hub.validation_until < time.time()

        a.lt.run(va.client.lease(0))  # the leader steps down: A serves every node again
        assert a.service.hub.validation_until <= time.time()
        assert ask(a).status_code == 200
    finally:
        for v in (va, vb):
            a.lt.run(v.client.aclose())
