"""The dashboard and /metrics against a real router with instant miners: the JSON the pages read, the Prometheus
counts, and the pages themselves in a real headless Chromium (Debian's ``chromium``, driven by Playwright)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hivemesh.config import SessionDefaults

from ..conftest import API_KEY, Network

MODEL = "instant-echo"


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=2, quorum=2, mode="exact"))
    for name in "abc":
        network.add_miner(name)
    return network


def ask(net: Network, prompt: str, **kw: Any) -> Any:
    return net.client(**kw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], seed=7
    )


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (task observers run just after the answer is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, "condition not met in time"
            return value
        time.sleep(0.02)


def dash(net: Network) -> httpx.Client:
    return httpx.Client(base_url=net.url, timeout=10)  # public: no API key


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


# ---------------------------------------------------------------------- JSON and /metrics


def test_json_endpoints_show_the_running_network(net: Network) -> None:
    answers = [ask(net, f"question {i}") for i in range(4)]
    nodes = set(net.service.hub.links)
    with dash(net) as c:
        ov = wait_until(lambda: (d := c.get("/dashboard/api/overview").json())["tasks_per_min"] == 4 and d)
        assert ov["nodes"] == {"online": 3, "quarantined": 0, "known": 3}
        assert ov["tasks_total"] == 4 and ov["tasks_by_phase"] == {"ended": 4}
        assert ov["verified_share"] == 1.0 and ov["queue_depth"] == 0
        assert ov["tokens_last_min"] == sum(a.usage.completion_tokens for a in answers)

        heat = c.get("/dashboard/api/nodes").json()
        assert {r["node"] for r in heat["data"]} == nodes
        assert len(heat["hours"]) == 24 and heat["floors"]["min_total"] == 0.5
        assert sum(h["assigned"] for r in heat["data"] for h in r["hours"]) == 4 * 2  # k=2 miners per task
        for r in heat["data"]:
            assert r["online"] and not r["quarantined"]
            assert set(r["scores"]) == {"total", "precommit", "commit", "agreement", "tokens_per_s"}
            assert r["hours"] == [] or r["hours"][-1]["hour"] == heat["hours"][-1]

        addr = heat["data"][0]["node"]
        node = c.get(f"/dashboard/api/nodes/{addr}").json()
        rep = net.service.reputation.report(addr)
        assert node["level"] == rep["level"] and node["scores"] == rep["scores"]
        assert "total =" in node["formula"] and node["link"]["models"] == [MODEL]
        assert isinstance(node["events"], list)

        tasks = c.get("/dashboard/api/tasks").json()["data"]
        assert len(tasks) == 4 and {t["verdict"] for t in tasks} == {"verified"}
        tid = answers[0].model_extra["hivemesh"]["task_id"]
        r = c.get(f"/dashboard/api/tasks/{tid}")
        task = r.json()
        phases = [e["phase"] for e in task["timeline"]]
        for p in ("assigned", "acked", "precommitted", "committed", "validated", "ended"):
            assert p in phases
        assert len(task["miners"]) == 2 and all(m["in_consensus"] for m in task["miners"])
        assert "answer" not in task and answers[0].choices[0].message.content not in r.text  # public page

        sessions = c.get("/dashboard/api/sessions").json()["data"]
        assert [s["tasks"] for s in sessions] == [4]
        assert c.get("/dashboard/api/tasks", params={"session": sessions[0]["id"]}).json()["data"]

        assert c.get("/dashboard/api/nodes/0xnobody").status_code == 404
        assert c.get("/dashboard/api/tasks/task_nope").status_code == 404
        assert c.get("/dashboard/api/nodes", params={"hours": "x"}).status_code == 400
        for path in ("/dashboard", f"/dashboard/nodes/{addr}", "/dashboard/sessions", "/dashboard/tasks"):
            page = c.get(path)
            assert page.status_code == 200 and "/dashboard/static/dashboard.js" in page.text
        assert c.get("/dashboard/static/dashboard.css").status_code == 200


def test_metrics_count_tasks_by_verdict(net: Network) -> None:
    with httpx.Client(base_url=net.url, headers={"authorization": f"Bearer {API_KEY}"}) as c:
        sid = c.post("/api/v1/sessions", json={"redundancy": 1, "quorum": 1, "mode": "none"}).json()["id"]
    verified = [ask(net, f"v{i}") for i in range(3)]
    unverified = [ask(net, f"u{i}", default_headers={"x-hivemesh-session": sid}) for i in range(2)]
    assert {a.model_extra["hivemesh"]["verdict"] for a in unverified} == {"unverified"}

    def scrape() -> dict[Any, float]:
        r = httpx.get(net.url + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return metric_samples(r.text)

    m = wait_until(lambda: (s := scrape())[("hivemesh_tasks_total", (("verdict", "unverified"),))] == 2 and s)
    assert m[("hivemesh_tasks_total", (("verdict", "verified"),))] == 3
    assert m[("hivemesh_tasks_total", (("verdict", "disputed"),))] == 0
    assert m[("hivemesh_tasks_total", (("verdict", "failed"),))] == 0
    assert m[("hivemesh_task_duration_seconds_count", (("verdict", "verified"),))] == 3
    served = sum(a.usage.completion_tokens for a in verified + unverified)
    assert m[("hivemesh_tokens_total", (("kind", "completion"),))] == served
    local = ("scope", "local")
    assert m[("hivemesh_miners", (local, ("state", "online")))] == 3
    assert m[("hivemesh_miners", (local, ("state", "quarantined")))] == 0
    assert m[("hivemesh_miner_slots", (local, ("state", "busy")))] == 0
    # a router without a cluster has no remote nodes: no remote series at all, not a zero one
    assert not [k for k in m if ("scope", "remote") in k[1]]
    assert m[("hivemesh_queue_depth", ())] == 0


# ---------------------------------------------------------------------- in a real browser


def stat(page: Any, name: str) -> str:
    return str(page.inner_text(f'[data-stat="{name}"]'))


@pytest.mark.browser
def test_overview_renders_the_network_and_updates_live(net: Network, page: Any, tmp_path: Path) -> None:
    for i in range(3):
        ask(net, f"warm-up {i}")
    wait_until(lambda: httpx.get(net.url + "/dashboard/api/overview").json()["tasks_per_min"] == 3)
    page.goto(net.url + "/dashboard")
    page.wait_for_selector("#heatmap")
    assert stat(page, "nodes_online") == "3"
    assert stat(page, "tasks_total") == "3" and stat(page, "tasks_per_min") == "3"
    assert stat(page, "verified_share") == "100.0%"
    rows = page.locator("#heatmap tbody tr")
    assert rows.count() == 3
    assert {rows.nth(i).get_attribute("data-node") for i in range(3)} == set(net.service.hub.links)
    assert page.locator("#heatmap th .floor").all_inner_texts() == ["≥ 0.50", "≥ 0.60"]

    page.click('th[data-sort="precommit"]')
    assert page.get_attribute('th[data-sort="precommit"]', "aria-sort") == "descending"

    page.evaluate("window.__notReloaded = true")
    ask(net, "one more")
    page.wait_for_function("document.querySelector('[data-stat=\"tasks_total\"]').textContent === '4'")
    assert page.evaluate("window.__notReloaded") is True
    assert page.get_attribute("#live", "data-state") == "live"
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)


@pytest.mark.browser
def test_clicking_a_node_and_a_task_opens_their_pages(net: Network, page: Any, tmp_path: Path) -> None:
    answer = ask(net, "for the task page")
    page.goto(net.url + "/dashboard")
    first = page.locator("#heatmap tbody tr").first
    address = first.get_attribute("data-node")
    first.locator("a").click()
    page.wait_for_url(f"**/dashboard/nodes/{address}")
    assert page.inner_text("#node-address") == address
    assert stat(page, "level").startswith(str(net.service.reputation.level(address)))
    assert "total =" in page.inner_text("pre.formula")
    page.screenshot(path=str(tmp_path / "node.png"), full_page=True)

    page.click("nav >> text=Tasks")
    page.wait_for_selector("#tasks")
    tid = answer.model_extra["hivemesh"]["task_id"]
    page.click(f'tr[data-task="{tid}"] a')
    page.wait_for_selector("#phases")
    assert page.inner_text("#task-id") == tid
    assert page.locator("#phases .step.done").count() == 7  # queued ... ended
    assert page.locator("#miners tbody tr").count() == 2
    page.screenshot(path=str(tmp_path / "task.png"), full_page=True)
