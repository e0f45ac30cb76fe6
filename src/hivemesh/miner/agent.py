"""The miner: dials the router (outbound WebSocket, so it works behind NAT), proves its identity, and serves tasks.

For each Assign the miner acks, runs the engine (streaming Delta frames when asked), then precommits
``sha256(salt || output)`` and reveals output and salt only when the router asks: by then every other miner has
precommitted too, so nobody can copy an answer they have not yet seen. Every message the network acts on is signed
over the connection's challenge nonce. If the router goes away the miner reconnects with capped back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import websockets
from websockets.asyncio.client import ClientConnection, connect

from hivemesh import __version__
from hivemesh.config import MinerConfig
from hivemesh.engines.base import Engine, Finished, GenerationRequest, Piece, Verifier, VerifyRequest
from hivemesh.errors import BadSignature, HivemeshError
from hivemesh.identity import Identity, verify
from hivemesh.protocol import wire

log = logging.getLogger(__name__)

_S = TypeVar("_S", wire.Hello, wire.Ack, wire.Precommit, wire.Commit, wire.Evidence)

# the router answers pings from its event loop: a router host that vanished (a half-open connection: no FIN,
# no RST) is noticed within PING_INTERVAL_S + PING_TIMEOUT_S, the closing handshake it cannot answer is given
# up after CLOSE_TIMEOUT_S, and the node dials again (another router of a cluster takes it at once);
# websockets' defaults (20 s + 20 s + 10 s) left such a node unreachable for 50 s. Every 10 s: a router holding
# 10,000 nodes answers 1,000 pings a second, a small share of what it spends on their tasks
PING_INTERVAL_S = 10.0
PING_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
REVEAL_GRACE_S = 60.0  # how long after its precommit a miner keeps an output waiting for the reveal request


def ws_url(router_url: str) -> str:
    base = router_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif not base.startswith(("ws://", "wss://")):
        base = "ws://" + base
    return base + "/ws/miner"


def _refusal(exc: BaseException) -> str | None:
    """``code reason`` when the router closed the connection on purpose (a 44xx code: it refused this node or
    cut it off), else None (the network or the router failed)."""
    closed = exc.rcvd if isinstance(exc, websockets.exceptions.ConnectionClosed) else None
    if closed is not None and 4400 <= closed.code < 4500:
        return f"{closed.code} {closed.reason}"
    return None


def hardware() -> wire.Hardware:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    except (ValueError, OSError):
        ram = 0
    return wire.Hardware(cpus=os.cpu_count() or 0, ram_gb=int(ram))


@dataclass(eq=False)
class _Job:
    assign: wire.Assign | wire.Verify
    reveal: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class MinerAgent:
    def __init__(self, config: MinerConfig, identity: Identity, engine: Engine) -> None:
        self.config = config
        self.identity = identity
        self.engine = engine
        self.capacity = config.capacity or engine.capacity
        self.jobs: dict[str, _Job] = {}
        self.connected = asyncio.Event()
        self.served = 0
        self.verified = 0

    async def run(self, on_join: Callable[[], None] | None = None) -> None:
        """Serve until cancelled, reconnecting whenever the router is unreachable or refuses this node.

        The back-off doubles up to ``reconnect_max_s`` and starts again only once a router has welcomed the node:
        a router that accepts the socket and then refuses the hello (another router holds the node, too little
        stake) is dialled no faster than one that is down. A refusal's reason is logged once, not on every
        retry, until the node is welcomed or the reason changes."""
        backoff = 0.2
        url = ws_url(self.config.router_url)
        refused: str | None = None  # the refusal last logged
        while True:
            welcomed, why = False, None
            try:
                async with connect(
                    url,
                    max_size=wire.MAX_FRAME,
                    open_timeout=10,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    close_timeout=CLOSE_TIMEOUT_S,
                    compression=None,
                ) as ws:
                    await self._session(ws, on_join)
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError, HivemeshError) as exc:
                why = _refusal(exc)
                if why is None:
                    log.warning("router connection lost url=%s error=%s retry_in=%.1fs", url, exc, backoff)
                elif why != refused:
                    log.warning("router refused this node url=%s reason=%s retrying", url, why)
                refused = why or refused
            finally:
                welcomed = self.connected.is_set()
                self.connected.clear()
                for job in list(self.jobs.values()):
                    if job.task:
                        job.task.cancel()
                self.jobs.clear()
            if welcomed:  # a session cut off by a refusal keeps it logged: the next hello meets it again
                backoff, refused = 0.2, refused if why is not None else None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_s)

    async def _session(self, ws: ClientConnection, on_join: Callable[[], None] | None) -> None:
        first = wire.decode_to_miner(await asyncio.wait_for(ws.recv(), 10))
        if not isinstance(first, wire.Challenge):
            raise BadSignature("router did not open with a challenge")
        nonce, router = first.nonce, first.router
        models = self.engine.models()
        if self.config.model_id:
            models = [m.model_copy(update={"id": self.config.model_id}) for m in models]
        hello = wire.Hello(
            node=self.identity.address,
            nonce=nonce,
            models=tuple(models),
            capacity=self.capacity,
            pool=self.config.pool,
            hardware=hardware(),
            version=__version__,
        )
        await ws.send(wire.encode(self._signed(hello, nonce)))
        welcome = wire.decode_to_miner(await asyncio.wait_for(ws.recv(), 10))
        if not isinstance(welcome, wire.Welcome):
            raise BadSignature("router did not welcome us")
        log.info("joined router=%s node=%s models=%s", router, self.identity.address, [m.id for m in models])
        self.connected.set()
        if on_join:
            on_join()
        async for raw in ws:
            try:
                msg = wire.decode_to_miner(raw)
            except ValueError as exc:
                log.warning("bad frame from router error=%s", str(exc)[:200])
                continue
            if isinstance(msg, wire.Assign | wire.Verify):
                try:
                    verify(wire.signing_payload(msg, nonce), msg.sig, router)
                except BadSignature as exc:
                    log.warning("assign with bad router signature task_id=%s error=%s", msg.task_id, exc)
                    continue
                if msg.task_id in self.jobs or len(self.jobs) >= self.capacity:
                    continue
                job = _Job(msg)
                self.jobs[msg.task_id] = job
                job.task = asyncio.create_task(self._run_job(ws, nonce, job), name=f"job-{msg.task_id}")
                # a job cancelled before its coroutine ran (an Assign and its Cancel read back to back) never
                # reaches _run_job's finally: without this its entry would hold a unit of capacity for good
                job.task.add_done_callback(functools.partial(self._forget, msg.task_id, job))
            elif isinstance(msg, wire.RevealRequest):
                if (waiting := self.jobs.get(msg.task_id)) is not None:
                    waiting.reveal.set()
            elif isinstance(msg, wire.Cancel):
                if (running := self.jobs.get(msg.task_id)) is not None and running.task:
                    running.task.cancel()
            elif isinstance(msg, wire.Ping):
                await ws.send(wire.encode(wire.Pong(nonce=msg.nonce)))

    def _forget(self, task_id: str, job: _Job, _: object = None) -> None:
        if self.jobs.get(task_id) is job:
            del self.jobs[task_id]

    def _signed(self, msg: _S, nonce: str) -> _S:
        return msg.model_copy(update={"sig": self.identity.sign(wire.signing_payload(msg, nonce))})

    async def _run_job(self, ws: ClientConnection, nonce: str, job: _Job) -> None:
        """Serve one assignment (generate) or verification request; report a failure to the router as TaskFailed."""
        tid = job.assign.task_id
        try:
            if isinstance(job.assign, wire.Assign):
                await self._serve(ws, nonce, job)
            else:
                await self._check(ws, nonce, job)
        except asyncio.CancelledError:
            raise
        except HivemeshError as exc:
            with contextlib.suppress(Exception):
                await ws.send(
                    wire.encode(wire.TaskFailed(task_id=tid, message=exc.message, code=exc.code or ""))
                )
        except TimeoutError:
            log.warning("reveal never requested task_id=%s", tid)
        except websockets.exceptions.ConnectionClosed:
            pass
        except Exception as exc:
            log.exception("task crashed task_id=%s", tid)
            with contextlib.suppress(Exception):
                await ws.send(wire.encode(wire.TaskFailed(task_id=tid, message=f"miner error: {exc}"[:2000])))
        finally:
            self.jobs.pop(tid, None)

    async def _check(self, ws: ClientConnection, nonce: str, job: _Job) -> None:
        """Verify a claimed answer: one forward pass, per-token evidence, signed."""
        v = job.assign
        assert isinstance(v, wire.Verify)
        tid = v.task_id
        if not isinstance(self.engine, Verifier):
            raise HivemeshError(f"engine {self.engine.name} cannot verify")
        t0 = time.monotonic()
        req = GenerationRequest(
            model=v.model, kind=v.kind, params=v.params, messages=v.messages, prompt=v.prompt
        )
        checks = await self.engine.verify(VerifyRequest(req, v.tokens, v.output, v.finish_reason))
        evidence = wire.Evidence(
            task_id=tid,
            node=self.identity.address,
            picks=checks.picks,
            margins=checks.margins,
            ranks=checks.ranks,
            logprobs=checks.logprobs,
            text_ok=checks.text_ok,
            prompt_tokens=checks.prompt_tokens,
            context_length=checks.context_length,
            problem=checks.problem,
            elapsed_ms=int((time.monotonic() - t0) * 1000),
        )
        await ws.send(wire.encode(self._signed(evidence, nonce)))
        self.verified += 1

    async def _serve(self, ws: ClientConnection, nonce: str, job: _Job) -> None:
        a = job.assign
        assert isinstance(a, wire.Assign)
        tid = a.task_id
        await ws.send(wire.encode(self._signed(wire.Ack(task_id=tid, node=self.identity.address), nonce)))
        t0 = time.monotonic()
        parts: list[str] = []
        finished: Finished | None = None
        req = GenerationRequest(
            model=a.model, kind=a.kind, params=a.params, messages=a.messages, prompt=a.prompt
        )
        async for ev in self.engine.generate(req):
            if isinstance(ev, Piece):
                if a.stream and ev.text:
                    await ws.send(wire.encode(wire.Delta(task_id=tid, index=len(parts), text=ev.text)))
                if ev.text:
                    parts.append(ev.text)
            else:
                finished = ev
        if finished is None:
            raise HivemeshError("engine ended without finishing")
        output = "".join(parts)
        salt = secrets.token_bytes(16)
        elapsed = int((time.monotonic() - t0) * 1000)
        node, usage, fin = self.identity.address, finished.usage, finished.finish_reason
        tokens = finished.tokens
        if a.reveal == "on_request":
            digest = wire.commit_digest(salt, output, tokens)
            pre = wire.Precommit(
                task_id=tid, node=node, usage=usage, digest=digest, finish_reason=fin, elapsed_ms=elapsed
            )
            await ws.send(wire.encode(self._signed(pre, nonce)))
            await asyncio.wait_for(job.reveal.wait(), a.deadline_ms / 1000 + REVEAL_GRACE_S)
        commit = wire.Commit(
            task_id=tid,
            node=node,
            usage=usage,
            output=output,
            salt=salt.hex(),
            finish_reason=fin,
            elapsed_ms=elapsed,
            tokens=tokens,
            logprobs=finished.logprobs,
        )
        await ws.send(wire.encode(self._signed(commit, nonce)))
        self.served += 1
