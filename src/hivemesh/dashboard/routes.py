"""The dashboard's routes: HTML pages (one shell, filled in by ``static/dashboard.js``), their JSON under
``/dashboard/api``, and the static files. Public and read-only: no route here takes an API key or changes state.

Pages poll their JSON every two seconds, so they follow the network live without reloading.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from hivemesh import __version__
from hivemesh.dashboard import views
from hivemesh.dashboard.activity import Activity
from hivemesh.dashboard.source import DashboardSource
from hivemesh.errors import InvalidRequest, NotFound

Handler = Callable[[Request], Awaitable[Response]]
_NO_STORE = {"cache-control": "no-store"}


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json", headers=_NO_STORE)


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}", param=name)
    return value


class Dashboard:
    def __init__(self, source: DashboardSource, activity: Activity) -> None:
        self.source = source
        self.activity = activity
        self.cells = views.HourCells()
        self.shell = resources.files("hivemesh.dashboard").joinpath("static/page.html").read_text("utf-8")

    def page(self, name: str, title: str) -> Handler:
        body = (
            self.shell.replace("{{page}}", name)
            .replace("{{title}}", html.escape(title))
            .replace("{{version}}", html.escape(__version__))
            .replace("{{router}}", html.escape(self.source.identity.address))
        )

        async def render(request: Request) -> Response:
            return HTMLResponse(body)

        return render

    async def api_overview(self, request: Request) -> Response:
        return _json(await views.overview(self.source, self.activity))

    async def api_nodes(self, request: Request) -> Response:
        hours = _int_param(request, "hours", 24, 1, 168)
        limit = _int_param(request, "limit", 100, 1, 1000)
        cursor = request.query_params.get("cursor") or None
        return _json(await views.nodes(self.source, hours, limit, cursor, self.cells))

    async def api_node(self, request: Request) -> Response:
        address = request.path_params["address"]
        data = await views.node(self.source, address, _int_param(request, "hours", 24, 1, 168))
        if data is None:
            raise NotFound(f"node {address!r} is not known to this router", param="address")
        return _json(data)

    async def api_sessions(self, request: Request) -> Response:
        return _json(await views.sessions(self.source, _int_param(request, "limit", 100, 1, 1000)))

    async def api_tasks(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 50, 1, 1000)
        return _json(await views.tasks(self.source, request.query_params.get("session") or None, limit))

    async def api_payments(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 50, 1, 500)
        return _json(await views.payments(self.source, limit))

    async def api_task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        data = await views.task(self.source, task_id)
        if data is None:
            raise NotFound(f"task {task_id!r} not found", param="task_id")
        return _json(data)


def dashboard_routes(source: DashboardSource) -> list[BaseRoute]:
    """The dashboard's routes for a router's app. Registers one task observer on ``source`` (the live rates)."""
    activity = Activity()
    source.observers.append(activity.observe)
    d = Dashboard(source, activity)
    get = ["GET"]
    return [
        Route("/dashboard", d.page("overview", "Network"), methods=get),
        Route("/dashboard/nodes/{address}", d.page("node", "Node"), methods=get),
        Route("/dashboard/sessions", d.page("sessions", "Sessions"), methods=get),
        Route("/dashboard/tasks", d.page("tasks", "Tasks"), methods=get),
        Route("/dashboard/tasks/{task_id}", d.page("task", "Task"), methods=get),
        Route("/dashboard/payments", d.page("payments", "Payments"), methods=get),
        Route("/dashboard/api/overview", d.api_overview, methods=get),
        Route("/dashboard/api/nodes", d.api_nodes, methods=get),
        Route("/dashboard/api/nodes/{address}", d.api_node, methods=get),
        Route("/dashboard/api/sessions", d.api_sessions, methods=get),
        Route("/dashboard/api/tasks", d.api_tasks, methods=get),
        Route("/dashboard/api/tasks/{task_id}", d.api_task, methods=get),
        Route("/dashboard/api/payments", d.api_payments, methods=get),
        Mount("/dashboard/static", app=StaticFiles(packages=[("hivemesh.dashboard", "static")])),
    ]
