"""The router's connection to the cluster's broker (Redis): keys, atomic scripts and pub/sub, behind one object.

    broker = await Broker.connect("redis://127.0.0.1:6379/0")   # fails fast (PING) with a clear sentence
    broker.subscribe("sessions", on_session_changed)             # handler(payload: bytes), on the event loop
    await broker.publish("sessions", b"ses_...")
    await broker.close()

Every key and channel name is prefixed (``hm:`` by default), so several networks can share one Redis. Pub/sub is
at-most-once: a message published while this router's subscription was down is lost. After such a gap the
``on_gap`` callbacks run, so what relies on messages (caches) can drop what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hivemesh.errors import ServiceUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[bytes], None]


class BrokerError(ServiceUnavailable):
    """The broker could not be reached (at start: the CLI says so in one sentence)."""


class Broker:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "hm:") -> None:
        self.redis = client
        self.prefix = prefix
        self._handlers: dict[str, list[Handler]] = {}
        self.on_gap: list[Callable[[], None]] = []  # run after the subscription was down (messages lost)
        self._listener: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # the set of channels changed: resubscribe
        self.subscribed = asyncio.Event()  # set once the current channels are subscribed

    @classmethod
    async def connect(cls, url: str, *, prefix: str = "hm:", timeout_s: float = 5.0) -> Broker:
        try:
            client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        except ValueError as exc:
            raise BrokerError(f"bad broker URL {url!r}: {exc}") from None
        try:
            await asyncio.wait_for(client.ping(), timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            raise BrokerError(
                f"cannot reach the cluster's broker at {url}: {exc or type(exc).__name__}"
            ) from None
        return cls(client, prefix=prefix)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def publish(self, channel: str, payload: bytes | str) -> None:
        await self.redis.publish(self.key(channel), payload)

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(payload)`` for every message on ``channel`` from now on (a background listener)."""
        self._handlers.setdefault(self.key(channel), []).append(handler)
        self.subscribed.clear()
        self._changed.set()
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="broker-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.redis.aclose()

    async def _listen(self) -> None:
        gap = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                self._changed.clear()
                await pubsub.subscribe(*self._handlers)
                if gap:
                    self._run_gap()
                    gap = False
                self.subscribed.set()
                while not self._changed.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._dispatch(msg)
            except (RedisError, OSError) as exc:
                if not gap:
                    log.warning("broker subscription lost error=%s", str(exc)[:200])
                gap = True
                self.subscribed.clear()
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await cast(Any, pubsub).aclose()  # typed only in newer redis releases

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = text(msg["channel"])
        data = msg["data"] if isinstance(msg["data"], bytes) else str(msg["data"]).encode()
        for handler in self._handlers.get(channel, ()):
            try:
                handler(data)
            except Exception:
                log.exception("broker handler failed channel=%s", channel)

    def _run_gap(self) -> None:
        log.info("broker subscription back: dropping what may have been missed")
        for callback in self.on_gap:
            try:
                callback()
            except Exception:
                log.exception("broker gap callback failed")


def text(raw: bytes | str | int) -> str:
    """A value as Redis returned it (bytes without ``decode_responses``), as text."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
