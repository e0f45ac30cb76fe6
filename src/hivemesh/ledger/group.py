"""Group commit: operations submitted while a batch commits wait, then commit together as the next batch.

No timer and no batch size to tune: with one caller the batch is that caller's operation alone (no added
latency); under load, every operation that arrives while the previous commit (an fsync) runs joins the next one,
so the commits per second stay few while the operations per commit grow. A caller's ``submit`` returns once
its operation is committed (durable) -- or raises its own error, or the batch's if the whole batch failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from hivemesh.errors import HivemeshError

Op = TypeVar("Op")
R = TypeVar("R")


class GroupCommit(Generic[Op, R]):
    """``commit(batch)`` applies a batch in one transaction and returns one result per operation, where a
    ``HivemeshError`` result is that operation's failure (raised to its caller alone)."""

    def __init__(
        self, commit: Callable[[Sequence[Op]], Awaitable[Sequence[R | HivemeshError]]], max_batch: int = 512
    ) -> None:
        self._commit = commit
        self._max = max_batch
        self._pending: list[tuple[Op, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # committed batches, and the operations in them (for benchmarks and logs)
        self.operations = 0

    async def submit(self, op: Op) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="ledger-group-commit")
        # A caller that is cancelled cancels only its future: its operation still commits (or fails) with
        # its batch, which skips futures already done.
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                results = await self._commit([op for op, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                        fut.exception()  # a caller that stopped waiting must not leave it unretrieved
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                    raise
                continue
            self.batches += 1
            self.operations += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, HivemeshError):
                    fut.set_exception(result)
                    fut.exception()
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        """Wait for every submitted operation to be committed."""
        while self._worker is not None and not self._worker.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._worker)
