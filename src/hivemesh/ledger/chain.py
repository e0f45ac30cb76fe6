"""The hash chain over journal entries, and its verification. Pure: no I/O.

Each entry belongs to one of N shards (``shard_of(task_id or account)``) and has a sequence number within it.
``hash = sha256(prev_hash || canonical(entry))`` where ``canonical`` covers every field that matters (shard, seq,
time, kind, reason, refs and all postings) and ``prev_hash`` is the hash of the shard's previous entry, or
``GENESIS``. The shard's head row records the last seq, hash and entry id, so deleting the newest entry shows
too. N independent chains let PostgreSQL settle unrelated tasks without one global lock; N = 1 is one chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

GENESIS = "0" * 64
_DOMAIN = "hivemesh-ledger-entry-v1"


@dataclass(frozen=True)
class EntryRecord:
    """The hashed content of one journal entry. ``postings`` are (account, delta) sorted by account."""

    shard: int
    seq: int
    ts_us: int
    kind: str
    reason: str
    session_id: str | None
    task_id: str | None
    node: str | None
    epoch: int | None
    postings: tuple[tuple[str, int], ...]


def canonical(e: EntryRecord) -> bytes:
    body = [
        _DOMAIN,
        e.shard,
        e.seq,
        e.ts_us,
        e.kind,
        e.reason,
        e.session_id,
        e.task_id,
        e.node,
        e.epoch,
        [[account, str(delta)] for account, delta in e.postings],
    ]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, e: EntryRecord) -> str:
    try:
        prev = bytes.fromhex(prev_hash)
    except ValueError:
        prev = (
            prev_hash.encode()
        )  # a tampered, non-hex prev_hash must still hash (to something that won't match)
    return hashlib.sha256(prev + canonical(e)).hexdigest()


def shard_of(key: str, shards: int) -> int:
    """A stable shard for ``key`` (Python's ``hash`` is salted per process, so not that)."""
    if shards == 1:
        return 0
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % shards


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries_checked: int
    first_bad_entry: int | None
    reason: str


@dataclass(frozen=True)
class Problem:
    entry_id: int | None
    reason: str


class ChainWalker:
    """Checks one shard's entries, fed in seq order; remembers the first problem only."""

    def __init__(
        self,
        shard: int,
        head_seq: int,
        head_hash: str,
        head_last_entry_id: int | None,
        anchor: tuple[int, str, str] | None = None,
    ) -> None:
        self.shard = shard
        self._head = (head_seq, head_hash, head_last_entry_id)
        self._anchor = anchor  # (seq, hash, which signed checkpoint): the entry there must still hash so
        self._seq = 0
        self._hash = GENESIS
        self.checked = 0
        self.problem: Problem | None = None

    def feed(self, entry_id: int, record: EntryRecord, prev_hash: str, stored_hash: str) -> None:
        if self.problem is not None:
            return
        self.checked += 1
        where = f"entry {entry_id} (shard {self.shard}, seq {record.seq})"
        if record.seq != self._seq + 1:
            missing = (
                f"seq {self._seq + 1}"
                if record.seq == self._seq + 2
                else f"seqs {self._seq + 1}..{record.seq - 1}"
            )
            self._fail(entry_id, f"{where}: the entry before it is missing ({missing} deleted?)")
        elif prev_hash != self._hash:
            self._fail(entry_id, f"{where}: prev_hash does not match the previous entry's hash")
        elif entry_hash(prev_hash, record) != stored_hash:
            self._fail(entry_id, f"{where}: hash mismatch, its content (amounts, reason, refs) was altered")
        elif len(record.postings) < 2 or any(d == 0 for _, d in record.postings):
            self._fail(entry_id, f"{where}: needs at least two non-zero postings")
        elif sum(d for _, d in record.postings) != 0:
            self._fail(entry_id, f"{where}: postings sum to {sum(d for _, d in record.postings)}, not 0")
        elif self._anchor is not None and record.seq == self._anchor[0] and stored_hash != self._anchor[1]:
            self._fail(
                entry_id,
                f"{where}: its hash differs from the one in the signed {self._anchor[2]}: history up to "
                "here was rewritten (every hash recomputed)",
            )
        self._seq = record.seq
        self._hash = stored_hash

    def finish(self) -> None:
        if self.problem is not None:
            return
        head_seq, head_hash, head_last = self._head
        if self._anchor is not None and self._seq < self._anchor[0]:
            self._fail(
                head_last,
                f"shard {self.shard}: the entries end at seq {self._seq} but the signed {self._anchor[2]} "
                f"covers seq {self._anchor[0]} (entries deleted and the chain rewritten?)",
            )
            return
        if (self._seq, self._hash) != (head_seq, head_hash):
            self._fail(
                head_last,
                f"shard {self.shard}: chain head is seq {head_seq} but the entries end at seq {self._seq} "
                f"(newest entries deleted, or the head was edited)",
            )

    def _fail(self, entry_id: int | None, reason: str) -> None:
        self.problem = Problem(entry_id, reason)


def first_problem(walkers: Sequence[ChainWalker]) -> Problem | None:
    """The problem with the lowest entry id across shards (one without an id sorts last)."""
    found = [w.problem for w in walkers if w.problem is not None]
    if not found:
        return None
    return min(found, key=lambda p: (p.entry_id is None, p.entry_id or 0))
