"""Signed checkpoints: the chain heads, signed by the router's key, kept in a file outside the database.

The hash chains make an edited entry show, unless the editor recomputes every later hash and the head row too:
the database alone cannot tell that history from the real one. A checkpoint anchors it outside: the router signs
each shard's (seq, hash) head with its secp256k1 identity (EIP-191, see ``hivemesh.identity``) at an interval and
on shutdown, and appends it as one JSON line to a file beside the database (``ledger.db.checkpoints``), fsynced.
``verify`` then also checks that each shard's entry at the checkpoint's seq still has the checkpoint's hash: a
rewritten history (anything at or before that seq) changes it, and so does deleting entries back past it. Only
the last readable, well-signed checkpoint is needed (the chain links everything before it); what was written
after it is covered by the next one.

One line::

    {"payload": {"domain": "hivemesh-ledger-checkpoint-v1", "ts_us": 1700000000000000,
                 "heads": [[0, 1234, "ab12..."]]},
     "signer": "0x...", "signature": "0x..."}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivemesh.errors import BadSignature, LedgerError
from hivemesh.identity import Identity, recover
from hivemesh.ledger.accounts import from_us

DOMAIN = "hivemesh-ledger-checkpoint-v1"


@dataclass(frozen=True)
class Checkpoint:
    ts_us: int
    heads: tuple[tuple[int, int, str], ...]  # (shard, seq, hash), by shard
    signer: str
    signature: str
    line: int = 0  # its line in the file (1-based), once read back

    def payload(self) -> bytes:
        return payload_bytes(self.ts_us, self.heads)

    def describe(self) -> str:
        where = f", line {self.line}" if self.line else ""
        return f"checkpoint of {from_us(self.ts_us).isoformat()} (signed by {self.signer}{where})"


def payload_bytes(ts_us: int, heads: tuple[tuple[int, int, str], ...]) -> bytes:
    body = {"domain": DOMAIN, "ts_us": ts_us, "heads": [list(h) for h in heads]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(identity: Identity, ts_us: int, heads: tuple[tuple[int, int, str], ...]) -> Checkpoint:
    return Checkpoint(ts_us, heads, identity.address, identity.sign(payload_bytes(ts_us, heads)))


def append(path: Path, cp: Checkpoint) -> None:
    """Append one checkpoint line and fsync it (blocking: run it off the event loop)."""
    line = json.dumps(
        {
            "payload": json.loads(cp.payload()),
            "signer": cp.signer,
            "signature": cp.signature,
        },
        separators=(",", ":"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a line a crash cut short: end it first
        os.write(fd, (("\n" if torn else "") + line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(raw: str, number: int) -> Checkpoint:
    obj: Any = json.loads(raw)
    body = obj["payload"]
    if body.get("domain") != DOMAIN:
        raise ValueError("not a ledger checkpoint")
    heads = tuple((int(s), int(q), str(h)) for s, q, h in body["heads"])
    return Checkpoint(int(body["ts_us"]), heads, str(obj["signer"]), str(obj["signature"]), number)


def _torn(raw: str, number: int, lines: list[str]) -> bool:
    """A prefix of a checkpoint line: the last line, or one that a later append ended (see ``append``)."""
    return raw.startswith('{"payload":') and (number == len(lines) or not raw.endswith("}"))


def last(path: Path, signer: str | None) -> Checkpoint | None:
    """The file's last checkpoint, its signature checked (by ``signer`` when given). A torn last line (a crash
    while appending) is skipped; any other unreadable or badly signed line is an error: someone edited it."""
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    found: Checkpoint | None = None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            cp = _parse(raw, number)
        except (ValueError, KeyError, TypeError) as e:
            if _torn(raw, number, lines):
                continue  # cut short by a crash mid-append (the next append starts a new line)
            raise LedgerError(f"{path}: line {number} is not a readable checkpoint ({e})") from None
        try:
            who = recover(cp.payload(), cp.signature)
        except BadSignature as e:
            raise LedgerError(f"{path}: {cp.describe()} has a malformed signature ({e.message})") from None
        if who != cp.signer or (signer is not None and who.lower() != signer.lower()):
            expected = signer or cp.signer
            raise LedgerError(f"{path}: {cp.describe()} is not signed by {expected} (signature of {who})")
        found = cp
    return found
