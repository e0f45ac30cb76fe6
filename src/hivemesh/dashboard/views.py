"""The dashboard's JSON views: plain dicts built from a ``DashboardSource``, one function per page.

The dashboard is public and read-only, so nothing here returns what a user sent or got (prompts, answers, miner
outputs) or who owns a session: tasks show their PoUW record, verdict, miners and token counts only.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select

from hivemesh.core.reputation import Counters, scores
from hivemesh.dashboard.activity import Activity
from hivemesh.dashboard.source import DashboardSource, LinkView, Row
from hivemesh.errors import InvalidRequest
from hivemesh.store import schema as s

HOUR = 3600
PHASES = ("queued", "assigned", "acked", "precommitted", "committed", "validated", "ended")
SCORE_KEYS = ("total", "precommit", "commit", "agreement", "tokens_per_s")


@dataclass(frozen=True, slots=True)
class Connected:
    """A node online somewhere in the network: its link, the router holding its connection, its load as known."""

    link: LinkView
    router: str
    inflight: int
    remote: bool  # another router holds it: what presence does not carry comes from the shared database


def where(src: DashboardSource, node: str) -> Connected | None:
    """The node's connection in the network: to this router (exact), else to another live router of its cluster
    (as presence last reported it: the holder's load for others plus this router's reservations). A node held by
    both for a moment is this router's, as in the router's node pool."""
    if (ln := src.hub.links.get(node)) is not None:
        return Connected(ln, src.identity.address, ln.inflight, remote=False)
    if (rl := src.hub.remote.get(node)) is not None:
        return Connected(rl, rl.holder, rl.inflight + rl.elsewhere, remote=True)
    return None


def network(src: DashboardSource) -> list[Connected]:
    """Every node online in the network once (a router's ``router.roster``, which the dashboard cannot import): a
    router of a cluster shows the nodes the other routers hold as online, not just its own."""
    here = src.hub.links
    out = [Connected(ln, src.identity.address, ln.inflight, remote=False) for ln in here.values()]
    out += [
        Connected(rl, rl.holder, rl.inflight + rl.elsewhere, remote=True)
        for node, rl in src.hub.remote.items()
        if node not in here
    ]
    return out


async def overview(src: DashboardSource, activity: Activity) -> dict[str, Any]:
    online = network(src)
    rep = src.reputation
    by_phase = await src.store.fetch_all(
        select(s.tasks.c.phase, func.count().label("n")).group_by(s.tasks.c.phase)
    )
    known = await src.store.fetch_all(select(func.count().label("n")).select_from(s.nodes))
    phases = {r["phase"]: r["n"] for r in by_phase}
    return {
        "router": src.identity.address,
        "uptime_s": round(time.time() - src.started_at, 1),
        "nodes": {
            "online": len(online),
            "quarantined": sum(1 for c in online if rep.is_quarantined(c.link.node)),
            "known": known[0]["n"] if known else 0,
        },
        "capacity": sum(c.link.capacity for c in online),
        "inflight": sum(c.inflight for c in online),
        "queue_depth": src.scheduler.depth,
        "tasks_total": sum(phases.values()),
        "tasks_by_phase": phases,
        **activity.summary(),
    }


def _hour_axis(hours: int) -> list[int]:
    now = int(time.time() // HOUR) * HOUR
    return [now - (hours - 1 - i) * HOUR for i in range(hours)]


def _link_json(at: Connected, row: Row) -> dict[str, Any]:
    """The node's connection. Presence does not carry hardware or version: for a node another router holds they
    come from its row in the shared database (``row``), which that router wrote when the node joined."""
    ln = at.link
    return {
        "router": at.router,
        "models": sorted(ln.models),
        "capacity": ln.capacity,
        "inflight": at.inflight,
        "hardware": (row.get("hardware") or {}) if at.remote else ln.hardware.model_dump(),
        "version": (row.get("version") or "") if at.remote else ln.version,
        "connected_at": ln.connected_at,
        "tasks_finished": ln.finished,
    }


class HourCells:
    """Hourly cells already scored, per (node, hour): a past hour's counters never change, and the current
    hour's are a new object after each update, so a cell is reused while its ``Counters`` is the same object."""

    def __init__(self, max_cells: int = 300_000) -> None:
        self.max_cells = max_cells
        self._cells: dict[tuple[str, int], tuple[Counters, dict[str, Any]]] = {}

    def of(self, src: DashboardSource, node: str, since: int) -> list[dict[str, Any]]:
        """The node's hourly totals since ``since`` (what ``Reputation.heatmap`` gives, for one node)."""
        if len(self._cells) > self.max_cells:
            self._cells.clear()
        out = []
        for b, c in sorted(src.reputation.buckets.get(node, {}).items()):
            if b < since:
                continue
            hit = self._cells.get((node, b))
            if hit is None or hit[0] is not c:
                hit = self._cells[(node, b)] = (
                    c,
                    {"hour": b, "total": round(scores(c).total, 4), "assigned": c.assigned},
                )
            out.append(hit[1])
        return out


def _node_row(src: DashboardSource, node: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the rank table, from the reputation's cached scores (no window sums but ``assigned``)."""
    rep = src.reputation
    at = where(src, node)
    sc = rep.scores(node)
    lv = rep.levels.get(node)
    since = int((time.time() - rep.window_s) // HOUR) * HOUR
    return {
        "node": node,
        "online": at is not None,
        "router": at.router if at else None,  # the router holding its connection
        "quarantined": rep.is_quarantined(node),
        "level": lv.level if lv else 0,
        "streak": lv.streak if lv else 0,
        "assigned": sum(c.assigned for b, c in rep.buckets.get(node, {}).items() if b >= since),
        "scores": {k: round(getattr(sc, k), 4) for k in SCORE_KEYS},
        "hours": cells,
        "models": sorted(at.link.models) if at else [],
    }


def encode_cursor(total: float, node: str) -> str:
    """An opaque cursor: the sort key of the last row of a page."""
    return base64.urlsafe_b64encode(orjson.dumps([total, node])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        total, node = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(total, bool) or not isinstance(total, int | float) or not isinstance(node, str):
            raise TypeError
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRequest("cursor is not one this API gave out", param="cursor") from None
    return float(total), node


async def nodes(
    src: DashboardSource,
    hours: int = 24,
    limit: int = 100,
    cursor: str | None = None,
    cells: HourCells | None = None,
) -> dict[str, Any]:
    """The heatmap rank table, one page: nodes online, seen or scored in the last ``hours``, best total score
    first (ties by address), each with its hourly totals. ``next_cursor`` continues after the page's last row.

    Only the sort needs every node (one cached score each); reports and hourly cells are built for the page."""
    axis = _hour_axis(hours)
    rep = src.reputation
    cells = cells or HourCells()
    seen = await src.store.fetch_scalars(select(s.nodes.c.address).where(s.nodes.c.last_seen >= axis[0]))
    names = set(rep.buckets) | set(src.hub.links) | set(src.hub.remote) | set(seen)
    total = rep.total
    keyed = sorted([(-total(n), n) for n in names])
    if cursor is not None:
        after, node = decode_cursor(cursor)
        keyed = keyed[bisect.bisect_right(keyed, (-after, node)) :]
    page = keyed[:limit]
    more = len(keyed) > limit
    return {
        "hours": axis,
        "floors": {
            "min_total": rep.floors.min_total,
            "min_precommit": rep.floors.min_precommit,
            "min_samples": rep.floors.min_samples,
        },
        "window_s": rep.window_s,
        "count": len(names),
        "data": [_node_row(src, n, cells.of(src, n, axis[0])) for _, n in page],
        "next_cursor": encode_cursor(-page[-1][0], page[-1][1]) if more and page else None,
    }


async def node(src: DashboardSource, address: str, hours: int = 24) -> dict[str, Any] | None:
    """One node: scores and the counters behind them, level, formula, hourly totals, recent score events."""
    at = where(src, address)
    known = await src.store.fetch_all(select(s.nodes).where(s.nodes.c.address == address))
    heat = src.reputation.heatmap(hours).get(address)
    if at is None and not known and heat is None:
        return None
    rep = src.reputation.report(address)
    events = await src.store.node_events(node=address, limit=50)
    row: Row = known[0] if known else {}
    return {
        "node": address,
        "online": at is not None,
        "router": at.router if at else None,  # the router holding its connection
        "quarantined": rep["quarantined"],
        "level": rep["level"],
        "streak": rep["streak"],
        "scores": rep["scores"],
        "counters": rep["counters"],
        "formula": rep["formula"],
        "floors": rep["floors"],
        "window_s": rep["window_s"],
        "hours": _hour_axis(hours),
        "heat": heat or [],
        "first_seen": row.get("first_seen"),
        "last_seen": row.get("last_seen"),
        "link": _link_json(at, row) if at else None,
        "events": [
            {"at": e["ts"], "kind": e["kind"], "task_id": e["task_id"], "detail": e["detail"]} for e in events
        ],
    }


async def sessions(src: DashboardSource, limit: int = 100) -> dict[str, Any]:
    t = s.tasks
    counts = (
        select(t.c.session_id, func.count().label("tasks"), func.max(t.c.created_at).label("last_task_at"))
        .group_by(t.c.session_id)
        .subquery()
    )
    q = (
        select(s.sessions, counts.c.tasks, counts.c.last_task_at)
        .outerjoin(counts, counts.c.session_id == s.sessions.c.id)
        .order_by(s.sessions.c.created_at.desc())
        .limit(limit)
    )
    rows = await src.store.fetch_all(q)
    return {
        "data": [
            {
                "id": r["id"],
                "name": r["name"],
                "model": r["model"],
                "redundancy": r["redundancy"],
                "quorum": r["quorum"],
                "mode": r["mode"],
                "sla": r["sla"],
                "active": r["active"],
                "default": r["is_default"],
                "created_at": r["created_at"],
                "tasks": r["tasks"] or 0,
                "last_task_at": r["last_task_at"],
            }
            for r in rows
        ]
    }


def _task_summary(r: Row) -> dict[str, Any]:
    result = r["result"] or {}
    return {
        "id": r["id"],
        "session_id": r["session_id"],
        "model": r["model"],
        "kind": r["kind"],
        "phase": r["phase"],
        "verdict": r["verdict"],
        "miners": len(result.get("miners", [])),
        "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"],
        "created_at": r["created_at"],
        "finished_at": r["finished_at"],
        "duration_ms": round((r["finished_at"] - r["created_at"]) * 1000) if r["finished_at"] else None,
        "error": r["error"],
    }


async def tasks(src: DashboardSource, session_id: str | None = None, limit: int = 50) -> dict[str, Any]:
    t = s.tasks
    cols = [c for c in t.c if c.name not in ("request", "answer", "candidates")]
    q = select(*cols).order_by(t.c.created_at.desc()).limit(limit)
    if session_id:
        q = q.where(t.c.session_id == session_id)
    rows = await src.store.fetch_all(q)
    return {"session_id": session_id, "data": [_task_summary(r) for r in rows]}


async def task(src: DashboardSource, task_id: str) -> dict[str, Any] | None:
    """One task's PoUW record: its phase timeline (every event, relative to creation) and its miners."""
    row = await src.store.get_task(task_id)
    if row is None:
        return None
    t0 = row["created_at"]
    events = await src.store.task_events(task_id)
    slots = await src.store.task_assignments(task_id)

    def rel(ts: float | None) -> float | None:
        return None if ts is None else round((ts - t0) * 1000, 1)

    result = row["result"] or {}
    return {
        **_task_summary(row),
        "seed": row["seed"],
        "finish_reason": row["finish_reason"],
        "cost": str(result["cost"]) if result.get("cost") not in (None, "") else None,  # smallest unit
        "phases": PHASES,
        "verification": {
            k: result.get(k)
            for k in ("mode", "agreement", "similarity", "consensus", "dissent", "answered_by")
        },
        "timeline": [
            {
                "phase": e["phase"],
                "at_ms": rel(e["ts"]),
                "node": e["node"],
                "detail": {k: v for k, v in (e["detail"] or {}).items() if k != "output"},
            }
            for e in events
        ],
        "miners": [
            {
                "node": a["node"],
                "slot": a["slot"],
                "status": a["status"],
                "assigned_ms": rel(a["assigned_at"]),
                "acked_ms": rel(a["acked_at"]),
                "precommit_ms": rel(a["precommit_at"]),
                "commit_ms": rel(a["commit_at"]),
                "precommit": a["digest"],
                "in_consensus": a["in_consensus"],
                "elapsed_ms": a["elapsed_ms"],
                "ttft_ms": a["ttft_ms"],
                "completion_tokens": a["completion_tokens"],
                "reason": a["reason"],
            }
            for a in slots
        ],
    }


def _amount(value: int) -> str:
    """Amounts go out as decimal strings of the smallest unit (10**-18 COR): exact beyond 2**53."""
    return str(int(value))


# entries whose addresses are nodes: public
NODE_ENTRIES = frozenset({"payout", "stake", "unstake", "slash", "reward"})


def _shown(account: str, kind: str, nodes: Any) -> str:
    """A user's address is never shown whole on the public dashboard (``0x1234…abcd``); nodes' addresses are
    public (they are on the node pages), as are the ledger's own accounts (treasury, hold:..., world)."""
    if not (account.startswith("0x") and len(account) == 42) or kind in NODE_ENTRIES or account in nodes:
        return account
    return f"{account[:6]}…{account[-4:]}"


def _entry_json(e: Any, nodes: Any = ()) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.ts.timestamp(),
        "kind": e.kind,
        "reason": e.reason,
        "amount": _amount(e.amount),
        "from": [
            {"account": _shown(a, e.kind, nodes), "amount": _amount(-d)} for a, d in e.postings if d < 0
        ],
        "to": [{"account": _shown(a, e.kind, nodes), "amount": _amount(d)} for a, d in e.postings if d > 0],
        "session_id": e.session_id,
        "task_id": e.task_id,
        "node": e.node,
    }


async def payments(src: DashboardSource, limit: int = 50) -> dict[str, Any]:
    """Where the money is (balances summed per kind of ledger account), the latest journal entries and the nodes
    that earned most. Amounts are decimal strings in the smallest unit; ``ledger`` is false when nothing is billed."""
    ledger = src.ledger
    if ledger is None:
        return {"ledger": False, "totals": None, "entries": [], "top_nodes": []}
    by_kind: dict[str, int] = await ledger.balances_by_kind()
    entries = await ledger.recent_entries(limit)
    top = await ledger.top_accounts(limit=10)
    links, remote = src.hub.links, src.hub.remote
    chain = None
    if (chain_status := getattr(ledger, "status", None)) is not None:  # the evm back-end's batch sender
        cs = await chain_status()
        chain = {
            "state": cs.state,
            "rpc_url": cs.rpc_url,
            "pending_entries": max(0, cs.journal_head - cs.chain_cursor),
            "chain_cursor": cs.chain_cursor,
            "batches": cs.batches,
            "tasks_settled": cs.tasks_settled,
            "last_batch": cs.last_batch,
            "last_error": cs.last_error,
            "failed": list(cs.failed),
        }
    return {
        "ledger": True,
        "chain": chain,
        "unit": _amount(10**18),
        "totals": {
            "balances": _amount(by_kind["accounts"]),  # spendable, on user and node addresses
            "treasury": _amount(by_kind["treasury"]),
            "reward_pool": _amount(by_kind["reward_pool"]),
            "escrow": _amount(by_kind["escrow"]),
            "holds": _amount(by_kind["hold"]),
            "in_escrow": _amount(by_kind["escrow"] + by_kind["hold"]),
            "stake": _amount(by_kind["stake"]),
            "unstaking": _amount(by_kind["unstaking"]),
            "staked": _amount(by_kind["stake"] + by_kind["unstaking"]),
            "deposited": _amount(-by_kind["world"]),  # deposits minus withdrawals: the sum of all the above
        },
        "entries": [_entry_json(e, links.keys() | remote.keys()) for e in entries],
        "top_nodes": [
            {
                "address": a,
                "balance": _amount(bal),
                "earned": _amount(earned),
                "online": a in links or a in remote,
            }
            for a, bal, earned in top
            if earned > 0
        ],
    }
