"""What the dashboard reads from a router, as structural types.

The dashboard is a service beside the router and never imports it (an import-linter contract keeps it so).
``DashboardSource`` names the few attributes it reads; the router's ``RouterService`` satisfies it structurally,
and mypy checks that where the composition root passes one to ``dashboard_routes``. Every member is read-only
(a property), so the router's concrete, narrower types fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sqlalchemy.sql import Executable

from hivemesh.core.reputation import Counters, LevelState, Scores
from hivemesh.protocol.wire import Hardware

Row = dict[str, Any]


class LinkView(Protocol):
    """A connected miner."""

    @property
    def node(self) -> str: ...
    @property
    def models(self) -> frozenset[str]: ...
    @property
    def capacity(self) -> int: ...
    @property
    def inflight(self) -> int: ...
    @property
    def hardware(self) -> Hardware: ...
    @property
    def version(self) -> str: ...
    @property
    def connected_at(self) -> float: ...
    @property
    def finished(self) -> int: ...


class RemoteLinkView(LinkView, Protocol):
    """A miner connected to another router of the cluster, as that router last announced it."""

    @property
    def holder(self) -> str:
        """The router that holds its connection (its identity address)."""

    @property
    def elsewhere(self) -> int:
        """Tasks it runs for other routers, as its holder last said (``inflight`` is this router's own)."""


class HubView(Protocol):
    @property
    def links(self) -> Mapping[str, LinkView]:
        """The miners connected to this router."""

    @property
    def remote(self) -> Mapping[str, RemoteLinkView]:
        """The miners other live routers of the cluster hold (empty on a router without a cluster)."""


class SchedulerView(Protocol):
    @property
    def depth(self) -> int: ...


class FloorsView(Protocol):
    @property
    def min_total(self) -> float: ...
    @property
    def min_precommit(self) -> float: ...
    @property
    def min_samples(self) -> int: ...


class ReputationView(Protocol):
    @property
    def floors(self) -> FloorsView: ...
    @property
    def window_s(self) -> float: ...
    @property
    def buckets(self) -> Mapping[str, Mapping[int, Counters]]:
        """Counters per node per hour bucket (unix time of the hour's start)."""

    @property
    def levels(self) -> Mapping[str, LevelState]: ...
    def total(self, node: str) -> float: ...
    def scores(self, node: str) -> Scores: ...
    def heatmap(self, hours: int = ...) -> dict[str, list[dict[str, Any]]]: ...
    def report(self, node: str) -> dict[str, Any]: ...
    def is_quarantined(self, node: str) -> bool: ...


class StoreView(Protocol):
    async def fetch_all(self, stmt: Executable) -> list[Row]: ...
    async def fetch_scalars(self, stmt: Executable) -> list[Any]: ...
    async def get_task(self, task_id: str) -> Row | None: ...
    async def task_events(self, task_id: str) -> list[Row]: ...
    async def task_assignments(self, task_id: str) -> list[Row]: ...
    async def node_events(
        self, node: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Row]: ...


class IdentityView(Protocol):
    @property
    def address(self) -> str: ...


class DashboardSource(Protocol):
    """A running router, as the dashboard reads it (``RouterService`` fits)."""

    @property
    def hub(self) -> HubView: ...
    @property
    def store(self) -> StoreView: ...
    @property
    def reputation(self) -> ReputationView: ...
    @property
    def scheduler(self) -> SchedulerView: ...
    @property
    def identity(self) -> IdentityView: ...
    @property
    def started_at(self) -> float: ...
    @property
    def observers(self) -> list[Callable[[Any], None]]: ...
    @property
    def ledger(self) -> Any:
        """The router's ``hivemesh.ledger.Ledger``, or None when it bills nothing (the payments page says so)."""
