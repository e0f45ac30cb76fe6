"""Prometheus metrics for one router, served at ``/metrics``.

Each router gets its own ``CollectorRegistry`` (tests run many routers in one process; the global default registry
would mix them or refuse duplicate names). Task metrics are fed by a ``RouterService.observers`` callback, once per
ended or failed task; miner and queue gauges are read from the service when Prometheus scrapes.

``hivemesh_tasks_total{verdict}``                     tasks finished: verified, disputed, unverified, or failed
``hivemesh_task_duration_seconds{verdict}``           from miners assigned until every miner is classified
``hivemesh_tokens_total{kind}``                       prompt and completion tokens of the answers served
``hivemesh_miners{state,scope}``                      the network's miners: online, quarantined (of those online)
``hivemesh_miner_slots{state,scope}``                 advertised task slots of the network's miners: capacity, busy
``hivemesh_queue_depth``                              tasks waiting in the session queues

The miner gauges count the whole network, because a router of a cluster schedules on every router's nodes: by
``scope``, ``local`` for the connections this router holds and ``remote`` for the nodes other live routers of its
cluster hold (as presence last reported them, ``router.roster``). One router's series summed over ``scope`` give
the network; since every router reports the whole network, a sum across routers must keep to ``scope="local"``
(each node counted once, by its holder). A router without a cluster exposes only ``local`` series, with today's
values: no always-zero ``remote`` series for an alert on ``hivemesh_miners{state="online"}`` to trip on.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hivemesh.router.roster import roster
from hivemesh.router.service import RouterService
from hivemesh.router.token_run import Run

VERDICTS = ("verified", "disputed", "unverified", "failed")
# task wall time: instant engines finish in milliseconds, real models in seconds to minutes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _LiveState(Collector):
    """Gauges computed at scrape time from the running service."""

    def __init__(self, service: RouterService) -> None:
        self._service = weakref.ref(service)

    def collect(self) -> Iterable[Metric]:
        svc = self._service()
        if svc is None:
            return
        nodes = roster(svc.hub, svc.identity.address)
        scopes = {"local": [p for p in nodes if p.local]}
        if svc.cluster is not None:
            scopes["remote"] = [p for p in nodes if not p.local]
        miners = GaugeMetricFamily(
            "hivemesh_miners",
            "Miners in the whole network by state (online; quarantined, of those online) and scope (local: "
            "connected to this router; remote: to another live router of its cluster). Every router reports the "
            "whole network: sum one router's series over scope for the network; across routers sum only "
            "scope=local.",
            labels=["state", "scope"],
        )
        slots = GaugeMetricFamily(
            "hivemesh_miner_slots",
            "Task slots of the whole network's miners by state (capacity: advertised; busy: in use, for remote "
            "nodes as their router last reported) and scope (local: connected to this router; remote: to another "
            "live router of its cluster). Every router reports the whole network: sum one router's series over "
            "scope for the network; across routers sum only scope=local.",
            labels=["state", "scope"],
        )
        for scope, placed in scopes.items():
            quarantined = sum(1 for p in placed if svc.reputation.is_quarantined(p.link.node))
            miners.add_metric(["online", scope], len(placed))
            miners.add_metric(["quarantined", scope], quarantined)
            slots.add_metric(["capacity", scope], sum(p.link.capacity for p in placed))
            slots.add_metric(["busy", scope], sum(p.inflight for p in placed))
        yield miners
        yield slots
        yield GaugeMetricFamily(
            "hivemesh_queue_depth", "Tasks waiting in the session queues.", value=svc.scheduler.depth
        )


class RouterMetrics:
    def __init__(self, service: RouterService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tasks = Counter(
            "hivemesh_tasks", "Tasks finished, by verdict.", ["verdict"], registry=self.registry
        )
        self.duration = Histogram(
            "hivemesh_task_duration_seconds",
            "Task wall time from miners assigned until every miner is classified, by verdict.",
            ["verdict"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "hivemesh_tokens", "Tokens of the answers served.", ["kind"], registry=self.registry
        )
        for v in VERDICTS:  # every series exists from the start, so rate() sees the first task
            self.tasks.labels(verdict=v)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind=kind)
        self.registry.register(_LiveState(service))
        self.installed = False

    def observe(self, run: Run) -> None:
        """A ``RouterService.observers`` callback: one finished (``run.final``) or failed task."""
        final = run.final
        verdict = final.verdict if final is not None else "failed"
        self.tasks.labels(verdict=verdict).inc()
        self.duration.labels(verdict=verdict).observe(max(0.0, time.monotonic() - run.started))
        if final is not None:
            self.tokens.labels(kind="prompt").inc(final.usage.prompt_tokens)
            self.tokens.labels(kind="completion").inc(final.usage.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_BY_SERVICE: weakref.WeakKeyDictionary[RouterService, RouterMetrics] = weakref.WeakKeyDictionary()


def metrics_for(service: RouterService) -> RouterMetrics:
    """The service's metrics (made on first use; one registry per service)."""
    m = _BY_SERVICE.get(service)
    if m is None:
        m = _BY_SERVICE[service] = RouterMetrics(service)
    return m


def install_metrics(service: RouterService) -> RouterMetrics:
    """Feed the service's finished tasks into its metrics (idempotent)."""
    m = metrics_for(service)
    if not m.installed:
        service.observers.append(m.observe)
        m.installed = True
    return m


def metrics_route(service: RouterService) -> Route:
    """``GET /metrics`` in the Prometheus text format. Public, like ``/healthz``: it carries counts, no content."""
    m = metrics_for(service)

    async def metrics(request: Request) -> Response:
        return Response(m.render(), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics, methods=["GET"])
