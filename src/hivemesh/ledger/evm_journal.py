"""The journal is the chain's outbox: what the evm back-end sends, read from the ledger's own entries.

Every movement the router makes on the hot path (a session funded or topped up, a task settled, a session
closed, a reward, a slash) is already a durable, ordered journal entry in the local ledger database, committed
with the movement itself. The sender turns the entries after the chain's journal cursor (kept by the
SessionPayment contract, advanced by each batch) into one ``apply_batch`` call; a batch that reverts, a crash,
an unreachable chain lose nothing, because the entries stay and the cursor only moves when a batch lands.

Mapping (entries mirrored from chain events carry the reason ``chain:<tx>:<log>`` and are never sent back):

    escrow   owner -> escrow:<s>                       Fund(s, owner, amount)
    payout   hold:<t> -> nodes  + charge hold -> fee   Settlement(s, t, fee, payouts)
    release  escrow:<s> -> owner (no task)             close(s)
    reward   reward_pool -> account                    Reward(account, amount)
    slash    stake/unstaking:<n> -> treasury           Slash(n, active, cooling, evidence)
    reserve, release of a hold                         nothing (the chain settles from escrow)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from hivemesh.ledger.accounts import TREASURY, EntryKind

CHAIN_REASON = "chain:"  # reason prefix of entries mirrored from chain events

# the entries after a cursor with their postings, in journal order (the cursor is an entry id)
_ENTRIES = (
    "SELECT e.id, e.kind, e.reason, e.session_id, e.task_id, e.node, p.account, p.delta "
    "FROM entries e JOIN postings p ON p.entry_id = e.id WHERE e.id > ? AND e.id <= ? ORDER BY e.id, p.id"
)
_NEXT_IDS = "SELECT id, task_id FROM entries WHERE id > ? ORDER BY id LIMIT ?"
_HEAD = "SELECT MAX(id) FROM entries"


def ref32(ref: str) -> bytes:
    """A session or task id as the contracts know it: its sha256."""
    return hashlib.sha256(ref.encode()).digest()


@dataclass
class Batch:
    """One ``apply_batch`` call: the entries (prev_cursor, cursor] translated."""

    prev_cursor: int
    cursor: int
    funds: list[tuple[bytes, str, int]] = field(default_factory=list)
    settlements: list[tuple[bytes, bytes, int, int]] = field(default_factory=list)
    payouts: list[tuple[str, int]] = field(default_factory=list)
    rewards: list[tuple[str, int]] = field(default_factory=list)
    closes: list[bytes] = field(default_factory=list)
    slashes: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # the settled tasks, in order
    keys: list[str] = field(default_factory=list)  # every op's key (a task id, or entry:<id>), for skipping

    @property
    def ops(self) -> int:
        return (
            len(self.funds) + len(self.settlements) + len(self.rewards) + len(self.closes) + len(self.slashes)
        )

    def args(self) -> tuple[Any, ...]:
        return (
            self.prev_cursor,
            self.cursor,
            self.funds,
            self.settlements,
            self.payouts,
            self.rewards,
            self.closes,
            self.slashes,
        )


async def head(conn: Any) -> int:
    """The newest entry id (0 for an empty journal)."""
    return int((await conn.exec_driver_sql(_HEAD)).scalar() or 0)


async def read(
    conn: Any, cursor: int, max_entries: int, treasury: str, skip: frozenset[str] = frozenset()
) -> Batch:
    """The next batch after ``cursor``: at most ``max_entries`` entries, extended to the end of the last task's
    settlement (its payout and fee entries land together); entries in ``skip`` (known to revert) left out."""
    rows = list(await conn.exec_driver_sql(_NEXT_IDS, (cursor, max_entries + 4)))
    if not rows:
        return Batch(cursor, cursor)
    through = rows[min(len(rows), max_entries) - 1][0]
    last_task = rows[min(len(rows), max_entries) - 1][1]
    for entry_id, task in rows[max_entries:]:
        if last_task is None or task != last_task:
            break
        through = entry_id
    batch = Batch(cursor, int(through))
    settle: dict[str, int] = {}  # task -> index in batch.settlements
    pays: dict[str, list[tuple[str, int]]] = {}
    entries: dict[int, dict[str, Any]] = {}
    for entry_id, kind, reason, session_id, task_id, node, account, delta in await conn.exec_driver_sql(
        _ENTRIES, (cursor, through)
    ):
        e = entries.setdefault(
            int(entry_id),
            {"kind": kind, "reason": reason, "session": session_id, "task": task_id, "node": node, "p": {}},
        )
        e["p"][account] = int(delta)
    for entry_id, e in entries.items():
        kind, p, session, task = e["kind"], e["p"], e["session"], e["task"]
        key = task if kind in (EntryKind.PAYOUT, EntryKind.CHARGE) and task else f"entry:{entry_id}"
        if key in skip or str(e["reason"]).startswith(CHAIN_REASON):
            continue
        if kind == EntryKind.ESCROW:
            owner = next(a for a, d in p.items() if d < 0)
            batch.funds.append((ref32(session), owner, -p[owner]))
            batch.keys.append(key)
        elif kind in (EntryKind.PAYOUT, EntryKind.CHARGE) and task:
            if task not in settle:
                settle[task] = len(batch.settlements)
                batch.settlements.append((ref32(session), ref32(task), 0, 0))
                batch.tasks.append(task)
                batch.keys.append(key)
                pays[task] = []
            if kind == EntryKind.CHARGE:
                s, t, fee, n = batch.settlements[settle[task]]
                batch.settlements[settle[task]] = (s, t, fee + p.get(TREASURY, 0), n)
            else:
                pays[task] += [(treasury if a == TREASURY else a, d) for a, d in sorted(p.items()) if d > 0]
        elif kind == EntryKind.RELEASE and not task and session:
            batch.closes.append(ref32(session))
            batch.keys.append(key)
        elif kind == EntryKind.REWARD:
            account = next(a for a, d in p.items() if d > 0)
            batch.rewards.append((treasury if account == TREASURY else account, p[account]))
            batch.keys.append(key)
        elif kind == EntryKind.SLASH and e["node"]:
            n = e["node"]
            evidence = hashlib.sha256(f"{task or ''}|{e['reason']}".encode()).digest()
            batch.slashes.append((n, -p.get(f"stake:{n}", 0), -p.get(f"unstaking:{n}", 0), evidence))
            batch.keys.append(key)
    for i, (s, t, fee, _) in enumerate(batch.settlements):
        task = batch.tasks[i]
        batch.settlements[i] = (s, t, fee, len(pays[task]))
        batch.payouts += pays[task]
    return batch
