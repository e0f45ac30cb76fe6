"""The money path through a real router: no false 402 under concurrency, limits and budgets on every submit
path, exact amounts of any size, private account views, and holds that a restart never leaves locked."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import insert, select

from hivemesh.config import COR, SessionDefaults
from hivemesh.identity import Identity
from hivemesh.ledger.schema import holds
from hivemesh.store import schema as s

from ..conftest import API_KEY, Network
from .test_billing import MODEL, new_user

PRICE_CAP = COR // 1000  # a small request costs well below this


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    network.add_staked_miner("a", capacity=64)
    return network


def drain(net: Network) -> None:
    async def idle() -> None:
        while net.service.hub.runs or net.service.billing._tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    net.lt.run(asyncio.wait_for(idle(), 30))


def hold_states(net: Network) -> dict[str, str]:
    async def go() -> dict[str, str]:
        async with net.service.ledger._db.read() as conn:
            return {r.task_id: r.state for r in await conn.execute(select(holds.c.task_id, holds.c.state))}

    return net.lt.run(go())


# ---------------------------------------------------------------------------------------------- false 402s


def test_a_funded_account_never_gets_402_from_concurrent_requests(net: Network) -> None:
    user, key = new_user(net, 1_000 * COR)
    client = openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0, timeout=60)
    codes: list[int] = []

    def ask(i: int) -> None:
        try:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=8
            )
            codes.append(200)
        except openai.APIStatusError as exc:
            codes.append(exc.status_code)

    for wave in range(2):
        threads = [threading.Thread(target=ask, args=(wave * 32 + i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert codes.count(402) == 0, codes
    assert codes == [200] * 64
    drain(net)
    lg = net.service.ledger
    assert net.lt.run(lg.verify()).ok
    assert net.lt.run(lg.account(user)).balance > 999 * COR
    assert set(hold_states(net).values()) == {"settled"}


def test_an_account_that_cannot_pay_still_gets_402(net: Network) -> None:
    _, key = new_user(net, 1)  # one base unit: not enough for any request's worst case
    with pytest.raises(openai.APIStatusError) as ei:
        openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    assert ei.value.status_code == 402
    assert "not enough balance" in ei.value.body["message"]
    assert hold_states(net) == {}


# ---------------------------------------------------------------------------------------------- limits


def session_of(net: Network, key: str) -> str:
    r = httpx.post(net.url + "/api/v1/sessions", json={}, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def deposit(net: Network, key: str, sid: str, amount: Any) -> httpx.Response:
    return httpx.post(
        f"{net.url}/api/v1/sessions/{sid}/deposit",
        json={"amount": amount},
        headers={"authorization": f"Bearer {key}"},
    )


def test_session_api_completions_apply_the_key_rpm(net: Network) -> None:
    _, key = new_user(net, 10 * COR, rpm=2)
    sid = session_of(net, key)
    assert deposit(net, key, sid, COR).status_code == 200
    auth = {"authorization": f"Bearer {key}"}
    codes = []
    for path in (f"/api/v1/completions/{sid}", "/api/v1/completions", f"/api/v1/completions/{sid}"):
        r = httpx.post(
            net.url + path, json={"session_id": sid, "prompt": "hi", "max_tokens": 4}, headers=auth
        )
        codes.append(r.status_code)
        if r.status_code == 200:
            assert r.headers["x-ratelimit-limit-requests"] == "2"
        else:
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
    assert codes == [200, 200, 429]


def test_a_key_budget_is_enforced_with_402_on_both_apis(net: Network) -> None:
    price = net.service.config.billing.default_price
    budget = 2 * price.of(100, 8)  # room for one small request; a 400-token worst case is far beyond it
    _, key = new_user(net, 10 * COR, budget=str(budget))
    client = openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "1"}], max_tokens=8)
    with pytest.raises(openai.APIStatusError) as ei:  # its worst case would take the key past its budget
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "2"}], max_tokens=400
        )
    assert ei.value.status_code == 402
    assert ei.value.body["code"] == "budget_exceeded"
    assert "budget" in ei.value.body["message"]
    sid = session_of(net, key)
    assert deposit(net, key, sid, COR).status_code == 200  # money is there; the budget is not
    r = httpx.post(
        f"{net.url}/api/v1/completions/{sid}",
        json={"prompt": "3", "max_tokens": 400},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded", r.text
    drain(net)
    assert net.lt.run(net.service.ledger.verify()).ok


# ---------------------------------------------------------------------------------------------- amounts


def test_deposits_take_exact_amounts_of_any_size(net: Network) -> None:
    _, key = new_user(net, 10**24)
    sid = session_of(net, key)
    big = 2**64 + 7
    r = deposit(net, key, sid, big)  # a JSON number beyond 64 bits
    assert r.status_code == 200, r.text
    assert r.json()["escrow"] == str(big)
    r = deposit(net, key, sid, str(1_000 * COR))  # a decimal string
    assert r.status_code == 200, r.text
    assert r.json()["escrow"] == str(big + 1_000 * COR)
    for bad in (0, -5, "-5", "0", "abc", "1.5", 1.5, True, None, [], "", "1e21"):
        r = deposit(net, key, sid, bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == "amount"


# ---------------------------------------------------------------------------------------------- privacy


def test_an_account_is_readable_by_its_own_keys_and_the_admin_only(net: Network) -> None:
    alice, alice_key = new_user(net, COR)
    bob, bob_key = new_user(net, COR)
    get = lambda who, key: httpx.get(  # noqa: E731
        f"{net.url}/api/v1/accounts/{who}", headers={"authorization": f"Bearer {key}"}
    )
    assert get(alice, alice_key).status_code == 200
    assert get(alice.lower(), alice_key).status_code == 200
    r = get(alice, bob_key)
    assert r.status_code == 404
    assert "balance" not in r.text and r.json()["error"]["type"] == "invalid_request_error"
    assert get(Identity.generate().address, bob_key).status_code == 404
    assert get(bob, API_KEY).status_code == 200  # the admin key reads any account


# ---------------------------------------------------------------------------------------------- restarts


def restart_router(net: Network, **kw: Any) -> None:
    port = int(net.url.rsplit(":", 1)[1])
    for name in list(net.miners):
        net.kill_miner(name)
    net.stop_router()
    net.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"), port=port, **kw)


def prior_task(net: Network, user: str, phase: str, *, row: bool = True, **values: Any) -> str:
    """A task the previous router process left behind: its hold reserved, its row in ``phase``."""
    svc = net.service
    session = net.lt.run(svc.sessions.default_for(user))
    tid = "task_" + Identity.generate().address[2:].lower()
    net.lt.run(svc.ledger.reserve(session.id, tid, PRICE_CAP, top_up_from=user))
    if row:
        now = time.time()
        request = {"messages": [{"role": "user", "content": "again"}], "prompt": "", "stream": False}
        request["params"] = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 4, "stop": [], "seed": 1}
        net.lt.run(
            svc.store.write(
                insert(s.tasks).values(
                    id=tid,
                    session_id=session.id,
                    model=MODEL,
                    kind="chat",
                    request=request,
                    phase=phase,
                    seed=1,
                    candidates=[],
                    created_at=now,
                    updated_at=now,
                    **values,
                )
            )
        )
    return tid


def test_restart_settles_ended_tasks_releases_failed_and_orphan_holds_and_runs_recovered_ones(
    net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hivemesh.router.service as service_module

    monkeypatch.setattr(service_module, "ORPHAN_MARGIN_S", 0.0)
    user, _ = new_user(net, 10 * COR)
    miner = net.agents["a"].identity.address
    result = {"cost": str(PRICE_CAP // 2), "consensus": [miner], "verdict": "unverified"}
    ended = prior_task(net, user, "ended", result=result, verdict="unverified", answer="x")
    validated = prior_task(net, user, "validated", result=result, verdict="unverified", answer="x")
    failed = prior_task(net, user, "failed", error="boom")
    orphan = prior_task(net, user, "queued", row=False)
    queued = prior_task(net, user, "queued")
    restart_router(net, queue_timeout_s=1.0)  # no miner yet: the recovered task must wait, not release

    deadline = time.monotonic() + 20
    while hold_states(net)[orphan] == "held" and time.monotonic() < deadline:
        time.sleep(0.05)
    states = hold_states(net)
    assert states[ended] == states[validated] == "settled"
    assert states[failed] == states[orphan] == "released"
    assert states[queued] == "held"  # still waiting for a miner: neither run nor released
    net.add_staked_miner("a")
    deadline = time.monotonic() + 30
    while hold_states(net)[queued] == "held" and time.monotonic() < deadline:
        time.sleep(0.05)
    drain(net)
    assert hold_states(net)[queued] == "settled"  # it ran after the restart, and was paid
    row = net.lt.run(net.service.store.get_task(queued))
    assert row["phase"] == "ended"
    lg = net.service.ledger
    assert net.lt.run(lg.account(miner)).earned > 0
    assert net.lt.run(lg.verify()).ok
    assert net.lt.run(lg.held()) == []
