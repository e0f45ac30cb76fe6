"""``hivemesh.client``: the Session API from Python, against a real router and miners on loopback."""

from __future__ import annotations

import httpx
import pytest

from hivemesh import errors
from hivemesh.client import Client
from hivemesh.config import COR, SessionDefaults
from hivemesh.identity import Identity

from ..conftest import API_KEY, Network

MODEL = "instant-echo"


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=2, quorum=2, mode="exact"))
    network.add_staked_miner("a")
    network.add_staked_miner("b")
    return network


def user(net: Network, funds: int) -> tuple[str, str]:
    address = Identity.generate().address
    with httpx.Client(base_url=net.url + "/api/v1", headers={"authorization": f"Bearer {API_KEY}"}) as c:
        assert c.post("/admin/deposits", json={"account": address, "amount": funds}).status_code == 200
        return address, c.post("/admin/keys", json={"account": address}).json()["secret"]


def test_sessions_submissions_task_records_and_balances(net: Network) -> None:
    address, key = user(net, 5 * COR)
    with Client(net.base_url, key) as hm:  # the OpenAI base URL works too
        assert MODEL in hm.info()["models"]
        s = hm.create_session(name="research", redundancy=2, quorum=2, mode="exact", metadata={"team": "x"})
        assert (s.name, s.redundancy, s.quorum, s.mode, s.active) == ("research", 2, 2, "exact", True)
        assert s.id in [x.id for x in hm.sessions()]
        assert hm.fund(s.id, COR) == COR
        assert hm.balance(address).balance == 4 * COR

        done = hm.submit(s.id, messages=[{"role": "user", "content": "hello"}], max_tokens=4, seed=-1)
        assert done.verdict == "verified" and done.text and len(done.text.split()) == 4
        record = hm.task(s.id, done.task_id)
        assert record.verdict == "verified" and record.answer == done.text and record.seed == 2**63 - 1
        assert len(record.miners) == 2 and all(m["precommit"] for m in record.miners)
        assert [t.id for t in hm.tasks(s.id)] == [done.task_id]

        queued = hm.submit(s.id, prompt="one two", wait=False)
        assert queued.text is None and queued.task_id.startswith("task_")

        assert hm.deactivate(s.id).active is False
        assert hm.session(s.id).active is False


def test_errors_raise_the_hivemesh_error_classes(net: Network) -> None:
    with Client(net.url, API_KEY) as hm:
        with pytest.raises(errors.NotFound):
            hm.session("ses_nope")
        with pytest.raises(errors.InvalidRequest) as ei:
            hm.create_session(ack_timeout_s=0.0001)
        assert ei.value.param == "ack_timeout_s" and ei.value.status == 400
    with Client(net.url, "hm-wrong") as bad, pytest.raises(errors.AuthenticationFailed):
        bad.sessions()
