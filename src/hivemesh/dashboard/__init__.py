"""The dashboard: web pages a router serves at ``/dashboard`` (network overview, the heatmap rank table of nodes,
node, session, task and payments pages), fed by JSON under ``/dashboard/api`` and updated live.

It reads a router through the ``DashboardSource`` protocol and imports nothing from ``hivemesh.router``.
"""

from hivemesh.dashboard.routes import dashboard_routes
from hivemesh.dashboard.source import DashboardSource

__all__ = ["DashboardSource", "dashboard_routes"]
