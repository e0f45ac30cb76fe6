"""``hivemesh.client.AsyncClient`` (and ``stream`` on both clients): sessions, submissions, streams that end with
the verdict, task records and errors, against a real router and miners on loopback."""

from __future__ import annotations

import pytest

from hivemesh import errors
from hivemesh.client import AsyncClient, Client, Completion, Delta
from hivemesh.config import SessionDefaults

from ..conftest import API_KEY, Network

MODEL = "instant-echo"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1))
    network.add_miner("a")
    network.add_miner("b")
    return network


async def test_async_client_mirrors_the_sync_one(net: Network) -> None:
    async with AsyncClient(net.base_url, API_KEY) as hm:
        assert MODEL in (await hm.info())["models"]
        s = await hm.create_session(name="async", mode="token", metadata={"k": "v"})
        assert s.mode == "token" and s.id in [x.id for x in await hm.sessions()]
        done = await hm.submit(s.id, messages=HI, max_tokens=6, seed=3)
        assert done.verdict == "verified" and done.text
        queued = await hm.submit(s.id, prompt="later", wait=False)
        assert queued.text is None and queued.task_id.startswith("task_")

        parts = [p async for p in hm.stream(s.id, messages=HI, max_tokens=6, seed=3)]
        *deltas, last = parts
        assert all(isinstance(d, Delta) for d in deltas) and isinstance(last, Completion)
        assert "".join(d.text for d in deltas if isinstance(d, Delta)) == last.text == done.text
        assert last.verdict == "verified" and last.verification["task_id"] == last.task_id

        record = await hm.task(s.id, last.task_id)
        assert record.verdict == "verified" and {m["role"] for m in record.miners} >= {"generator"}
        assert last.task_id in [t.id for t in await hm.tasks(s.id)]
        with pytest.raises(errors.ModelNotFound):
            await hm.submit(s.id, messages=HI, model="no-such-model")
        with pytest.raises(errors.ModelNotFound):
            _ = [p async for p in hm.stream(s.id, messages=HI, model="no-such-model")]
        assert not (await hm.deactivate(s.id)).active
        with pytest.raises(errors.InvalidRequest):
            await hm.submit(s.id, messages=HI)


def test_sync_client_streams_with_the_verdict(net: Network) -> None:
    with Client(net.url, API_KEY) as hm:
        s = hm.create_session(name="sync")
        *deltas, last = list(hm.stream(s.id, prompt="once upon", max_tokens=5))
        assert isinstance(last, Completion) and last.verdict == "verified"
        assert "".join(d.text for d in deltas if isinstance(d, Delta)) == last.text
