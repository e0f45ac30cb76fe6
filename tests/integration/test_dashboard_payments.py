"""The dashboard's payments page against a real router with a ledger and instant miners: the JSON shows the deposit,
each task's payouts and fee, balances that add up, and the page renders them in a real headless Chromium."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from hivemesh.config import COR, SessionDefaults
from hivemesh.dashboard import views
from hivemesh.identity import Identity

from ..conftest import API_KEY, Network

MODEL = "instant-echo"
ADMIN = {"authorization": f"Bearer {API_KEY}"}
DEPOSIT = 10 * COR
MINERS = "abc"  # each staked for pool 1 (billed work goes only to staked nodes)


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=3, quorum=2, mode="exact"))
    for name in MINERS:
        network.add_staked_miner(name)
    return network


def funded_user(net: Network) -> tuple[str, str]:
    address = Identity.generate().address
    with httpx.Client(base_url=net.url + "/api/v1", headers=ADMIN) as c:
        assert c.post("/admin/deposits", json={"account": address, "amount": DEPOSIT}).status_code == 200
        r = c.post("/admin/keys", json={"account": address})
        assert r.status_code == 201, r.text
        return address, r.json()["secret"]


def billed_requests(net: Network, key: str, n: int = 2) -> list[dict[str, Any]]:
    client = openai.OpenAI(base_url=net.base_url, api_key=key, max_retries=0, timeout=30)
    blocks = []
    for i in range(n):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"pay the miners {i}"}], max_tokens=8
        )
        blocks.append(r.model_extra["hivemesh"])
    assert {b["verdict"] for b in blocks} == {"verified"}

    async def settled() -> None:  # settlement runs in the background just after the answer
        while net.service.billing._tasks or any(b["task_id"] in net.service.hub.runs for b in blocks):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    net.lt.run(asyncio.wait_for(settled(), 10))
    return blocks


def payments(net: Network) -> dict[str, Any]:
    r = httpx.get(net.url + "/dashboard/api/payments", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_payments_json_shows_deposit_payouts_and_fee_that_add_up(net: Network) -> None:
    user, key = funded_user(net)
    blocks = billed_requests(net, key)
    d = payments(net)
    assert d["ledger"] is True and d["unit"] == str(COR)
    entries = d["entries"]
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)  # newest first

    masked = f"{user[:6]}…{user[-4:]}"  # a user's address is never shown whole on the public dashboard
    assert user not in str(d)
    deposit = [e for e in entries if e["kind"] == "deposit" and e["to"][0]["account"] == masked]
    assert len(deposit) == 1
    assert deposit[0]["to"] == [{"account": masked, "amount": str(DEPOSIT)}]
    assert deposit[0]["from"] == [{"account": "world", "amount": str(DEPOSIT)}]

    paid: dict[str, int] = {}
    fees = 0
    for b in blocks:
        tid, cost = b["task_id"], int(b["cost"])
        assert cost > 0
        mine = {e["kind"]: e for e in entries if e["task_id"] == tid}
        assert {"reserve", "payout", "charge"} <= set(mine)
        payout, charge = mine["payout"], mine["charge"]
        assert payout["session_id"] == b["session_id"]
        assert payout["from"] == [{"account": f"hold:{tid}", "amount": payout["amount"]}]
        miners = {p["account"] for p in payout["to"]}
        assert set(b["consensus"]) <= miners <= set(b["miners"])  # only miners in consensus are paid
        assert len({p["amount"] for p in payout["to"]}) == 1  # in equal shares
        assert charge["to"] == [{"account": "treasury", "amount": charge["amount"]}]
        assert int(payout["amount"]) + int(charge["amount"]) == cost  # the charge is split, nothing lost
        assert int(charge["amount"]) >= cost * net.service.config.billing.fee_bps // 10_000
        for p in payout["to"]:
            paid[p["account"]] = paid.get(p["account"], 0) + int(p["amount"])
        fees += int(charge["amount"])

    t = d["totals"]
    lg = net.service.ledger
    balance = net.lt.run(lg.account(user)).balance
    # conservation: what the user has, what is still in escrow, what the miners and the treasury got
    assert balance + int(t["in_escrow"]) + sum(paid.values()) + fees == DEPOSIT
    assert int(t["treasury"]) == fees and int(t["holds"]) == 0
    assert int(t["balances"]) == balance + sum(paid.values())
    stakes = len(MINERS) * net.service.config.billing.stake_pools[1]
    assert int(t["deposited"]) == DEPOSIT + stakes == net.lt.run(lg.totals())
    assert int(t["staked"]) == stakes and int(t["reward_pool"]) == 0

    top = {n["address"]: n for n in d["top_nodes"]}
    assert set(top) == set(paid)  # the user earned nothing and is not listed
    assert all(int(top[a]["earned"]) == paid[a] == int(top[a]["balance"]) and top[a]["online"] for a in paid)
    earned = [int(n["earned"]) for n in d["top_nodes"]]
    assert earned == sorted(earned, reverse=True)

    task = httpx.get(f"{net.url}/dashboard/api/tasks/{blocks[0]['task_id']}").json()
    assert task["cost"] == blocks[0]["cost"]
    assert httpx.get(net.url + "/dashboard/api/payments", params={"limit": "0"}).status_code == 400
    assert len(httpx.get(net.url + "/dashboard/api/payments", params={"limit": "2"}).json()["entries"]) == 2
    page = httpx.get(net.url + "/dashboard/payments")
    assert (
        page.status_code == 200 and 'data-page="payments"' in page.text and "/dashboard/payments" in page.text
    )


def test_without_a_ledger_the_page_says_so() -> None:
    src: Any = SimpleNamespace(ledger=None)
    d = asyncio.run(views.payments(src))
    assert d == {"ledger": False, "totals": None, "entries": [], "top_nodes": []}


# ---------------------------------------------------------------------- in a real browser


@pytest.mark.browser
def test_payments_page_shows_the_payout_rows(net: Network, page: Any) -> None:
    _, key = funded_user(net)
    blocks = billed_requests(net, key, n=1)
    page.goto(net.url + "/dashboard/payments")
    page.wait_for_selector("#entries")
    assert page.get_attribute('nav a[href="/dashboard/payments"]', "class") == "active"
    assert (
        page.inner_text('[data-stat="deposited"]').replace("\n", "") == "3,010 COR"
    )  # 10 + 3 stakes of 1,000
    rows = page.locator('#entries tr[data-kind="payout"]')
    assert rows.count() == 1
    row = rows.first
    assert blocks[0]["task_id"][:16] in row.inner_text()
    amount = row.locator("td.num .cor")
    assert amount.get_attribute("data-amount") == str(
        sum(int(e["amount"]) for e in payments(net)["entries"] if e["kind"] == "payout")
    )
    assert "10⁻¹⁸ COR" in (amount.get_attribute("title") or "")
    assert page.locator("#top-nodes tbody tr").count() >= len(blocks[0]["consensus"])

    # live: a second request appears without a reload
    page.evaluate("window.__notReloaded = true")
    billed_requests(net, key, n=1)
    page.wait_for_function("document.querySelectorAll('#entries tr[data-kind=\"payout\"]').length === 2")
    assert page.evaluate("window.__notReloaded") is True
    page.screenshot(path="/tmp/payments.png", full_page=True)

    # a task link on a payout row opens the task page, which shows the task's cost
    page.locator('#entries tr[data-kind="payout"]').first.locator(
        'a[href^="/dashboard/tasks/"]'
    ).first.click()
    page.wait_for_selector("#task-cost")
    assert "COR" in page.inner_text("#task-cost")
