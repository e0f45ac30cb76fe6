"""Prometheus metrics for one router, served at ``/metrics``.

Each router gets its own ``CollectorRegistry`` (tests run many routers in one process; the global default registry
would mix them or refuse duplicate names). Task metrics are fed by a ``RouterService.observers`` callback, once per
ended or failed task; miner and queue gauges are read from the service when Prometheus scrapes.

``hivemesh_tasks_total{verdict}``                     tasks finished: verified, disputed, unverified, or failed
``hivemesh_task_duration_seconds{verdict}``           from miners assigned until every miner is classified
``hivemesh_tokens_total{kind}``                       prompt and completion tokens of the answers served
``hivemesh_miners{state}``                            connected miners: online, quarantined (of those online)
``hivemesh_miner_slots{state}``                       advertised task slots of connected miners: capacity, busy
``hivemesh_queue_depth``                              tasks waiting in the session queues
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
        links = list(svc.hub.links.values())
        miners = GaugeMetricFamily("hivemesh_miners", "Connected miners by state.", labels=["state"])
        miners.add_metric(["online"], len(links))
        miners.add_metric(["quarantined"], sum(1 for ln in links if svc.reputation.is_quarantined(ln.node)))
        yield miners
        slots = GaugeMetricFamily(
            "hivemesh_miner_slots", "Task slots advertised by connected miners.", labels=["state"]
        )
        slots.add_metric(["capacity"], sum(ln.capacity for ln in links))
        slots.add_metric(["busy"], sum(ln.inflight for ln in links))
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
