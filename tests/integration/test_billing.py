"""Money through a real network: keys, escrow, per-token charges, payouts, slashing, limits, stake checks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from hivemesh.config import COR, SessionDefaults
from hivemesh.identity import Identity
from hivemesh.ledger import TREASURY

from ..conftest import API_KEY, Network
from .rogue import Rogue

MODEL = "instant-echo"
ADMIN = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=3, quorum=2, mode="exact"))
    for name in "abc":
        network.add_staked_miner(name)
    return network


def new_user(net: Network, funds: int, **key: Any) -> tuple[str, str]:
    """An account with ``funds`` and an API key bound to it, made through the admin endpoints."""
    address = Identity.generate().address
    with httpx.Client(base_url=net.url + "/api/v1", headers=ADMIN) as c:
        if funds:
            r = c.post("/admin/deposits", json={"account": address, "amount": funds})
            assert r.status_code == 200, r.text
        r = c.post("/admin/keys", json={"account": address, **key})
        assert r.status_code == 201, r.text
        return address, r.json()["secret"]


def ledger(net: Network) -> Any:
    return net.service.ledger


def wait_settled(net: Network, task_id: str, timeout: float = 10) -> None:
    async def settled() -> None:
        while task_id in net.service.hub.runs or net.service.billing._tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    net.lt.run(asyncio.wait_for(settled(), timeout))


def test_a_verified_answer_is_charged_and_its_miners_paid(net: Network) -> None:
    user, key = new_user(net, 10 * COR)
    client = openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0)
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "pay me"}], max_tokens=6
    )
    block = r.model_extra["hivemesh"]
    assert block["verdict"] == "verified"
    cost = int(block["cost"])
    price = net.service.config.billing.default_price
    assert cost == 3 * price.of(
        r.usage.prompt_tokens, r.usage.completion_tokens
    )  # k=3 executions of the answer
    assert r.usage.model_extra["cost"] == pytest.approx(cost / COR)
    wait_settled(net, block["task_id"])

    lg = ledger(net)
    acct = net.lt.run(lg.account(user))
    escrow = net.lt.run(lg.escrow_balance(block["session_id"]))
    assert acct.balance + escrow + cost == 10 * COR  # nothing created, nothing lost
    earned = {n: net.lt.run(lg.account(n)).earned for n in block["miners"]}
    fee = cost * net.service.config.billing.fee_bps // 10_000
    assert sum(earned.values()) + net.lt.run(lg.balance(TREASURY)) == cost
    assert all(earned[n] > 0 for n in block["consensus"])
    assert net.lt.run(lg.balance(TREASURY)) >= fee
    report = net.lt.run(lg.verify())
    assert report.ok, report
    with httpx.Client(base_url=net.url + "/api/v1", headers={"authorization": f"Bearer {key}"}) as c:
        view = c.get(f"/accounts/{user}").json()
        assert int(view["balance"]) == acct.balance
        task = c.get(f"/tasks/{block['session_id']}/{block['task_id']}").json()
        assert task["hivemesh"]["cost"] == str(cost)


def test_no_funds_is_402_and_nothing_runs(net: Network) -> None:
    _, key = new_user(net, 0)
    with pytest.raises(openai.APIStatusError) as ei:
        openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "free lunch?"}]
        )
    assert ei.value.status_code == 402
    assert ei.value.response.headers["x-should-retry"] == "false"
    assert ei.value.body["type"] == "insufficient_quota"


def test_concurrent_requests_never_overspend_the_escrow(net: Network) -> None:
    price = net.service.config.billing.default_price
    one = 3 * price.of(100, 16)  # a little more than one request's worst case
    user, key = new_user(net, 2 * one)
    client = openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0)
    codes: list[int] = []

    def ask() -> None:
        try:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=16
            )
            codes.append(200)
        except openai.APIStatusError as exc:
            codes.append(exc.status_code)

    import threading

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert 200 in codes and 402 in codes
    time.sleep(0)  # settlements run on the network loop
    deadline = time.monotonic() + 10
    while net.service.billing._tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    lg = ledger(net)
    assert net.lt.run(lg.account(user)).balance >= 0
    assert net.lt.run(lg.verify()).ok


def test_revoked_key_is_401(net: Network) -> None:
    _, key = new_user(net, COR)
    client = openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0)
    client.models.list()
    info = net.lt.run(ledger(net).authenticate(key))
    net.lt.run(ledger(net).revoke(info.key_id))
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_rate_limit_is_429_with_headers(net: Network) -> None:
    _, key = new_user(net, 10 * COR, rpm=2)
    client = openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "1"}]
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "2"}])
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "3"}])
    assert int(ei.value.response.headers["retry-after"]) >= 1


def test_admin_endpoints_need_the_admin_key(net: Network) -> None:
    _, key = new_user(net, COR)
    r = httpx.post(
        net.url + "/api/v1/admin/deposits",
        json={"account": Identity.generate().address, "amount": COR},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 403


def test_a_miner_without_enough_stake_cannot_join(network: Network, caplog: pytest.LogCaptureFixture) -> None:
    network.start_router()
    agent = network.add_miner("poor", pool=1, wait=False)
    deadline = time.monotonic() + 10
    while "stake" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert agent.identity.address not in network.service.hub.links
    assert "refused" in caplog.text and "stake" in caplog.text
    # staked enough: it joins
    lg = network.service.ledger
    network.lt.run(lg.deposit(agent.identity.address, 1_000 * COR))
    network.lt.run(lg.stake(agent.identity.address, 1_000 * COR, 1))
    deadline = time.monotonic() + 20
    while agent.identity.address not in network.service.hub.links and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.identity.address in network.service.hub.links


def test_a_proven_cheat_is_slashed_to_the_treasury(net: Network) -> None:
    liar = Identity.generate()
    lg = ledger(net)
    net.lt.run(lg.deposit(liar.address, 100 * COR))
    net.lt.run(lg.stake(liar.address, 100 * COR, 0))

    async def start() -> Rogue:
        rogue = Rogue(net.url, "liar", identity=liar)
        net.miners["liar"] = asyncio.ensure_future(rogue.run())
        await rogue.wait_connections(1)
        return rogue

    net.lt.run(start())
    net.wait_miners(4)
    treasury = net.lt.run(lg.balance(TREASURY))
    with httpx.Client(base_url=net.url + "/api/v1", headers=ADMIN) as c:
        sid = c.post("/sessions", json={"redundancy": 4, "quorum": 2, "mode": "exact"}).json()["id"]
        out = c.post(f"/completions/{sid}", json={"prompt": "catch the liar"}).json()
    assert out["hivemesh"]["verdict"] == "verified"
    assert liar.address in out["hivemesh"]["dissent"] or liar.address in out["hivemesh"]["pending"]
    deadline = time.monotonic() + 10
    while net.lt.run(lg.staked(liar.address)) == 100 * COR and time.monotonic() < deadline:
        time.sleep(0.02)
    assert net.lt.run(lg.staked(liar.address)) == 90 * COR  # 10% slashed
    assert net.lt.run(lg.balance(TREASURY)) == treasury + 10 * COR
    assert net.lt.run(lg.verify()).ok
