"""Three router processes on one PostgreSQL and one Redis, a swarm of light miners spread over two of them.

* A k=3 task on the router with no miners of its own is served, verified, by the other routers' miners.
* A router SIGKILLed under load loses no accepted task: every task in the record ends (the dead router's tasks
  are taken over by another router once their leases lapse), none ends twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bench._common import Procs
from bench.cluster import Cluster, failover_run, load


@pytest.fixture
def cluster(tmp_path: Path, pg_database: str, redis_url: str) -> Cluster:
    (tmp_path / "logs").mkdir()
    return Cluster(Procs(tmp_path / "logs"), tmp_path, pg_database, redis_url)


@pytest.mark.timeout(120)
def test_three_routers_one_network_and_a_sigkill_loses_no_task(cluster: Cluster) -> None:
    with cluster.procs:
        for _ in range(3):
            cluster.start_router()
        cluster.start_swarm(9, on=[1, 2], capacity=4)
        cluster.wait_nodes(9)
        assert cluster.health(0)["miners"] == 0  # type: ignore[index]

        # router 0 has no miners: its k=3 tasks run on the others', relayed, and are verified
        res = asyncio.run(load([cluster.url(0)], concurrency=3, duration=1.5))
        assert res.ok >= 3 and res.verified == res.ok and not res.failed, res

        # load on all three, router 2 SIGKILLed halfway: no accepted task is lost or run twice
        report = failover_run(cluster, victim=2, duration=4.0, concurrency=4, deadline=40)
        print("failover", report)  # taken_over: tasks of the dead router re-dispatched by another
        assert report["unfinished"] == 0, report
        assert report["failed"] == 0 and report["twice"] == 0, report
        assert report["ended"] == report["tasks"], report
