"""A scripted hostile miner: it speaks the real wire protocol (Challenge -> signed Hello -> Welcome) and then
misbehaves the way its ``behaviour`` says, so the router's defences can be tested end to end.

Behaviours (what it does with each Assign):

* ``garbage``  answers with non-JSON frames, malformed messages and an out-of-order Delta; never acks.
* ``flood``    sends ``FLOOD`` non-JSON frames as soon as it joins (and does not reconnect if ``reconnect=False``).
* ``liar``     precommits the digest of one output and reveals another (the honest one).
* ``copycat``  precommits at once (it has nothing to copy), then reveals the answer handed to it out of band
  (``hand()``) with a fresh salt.
* ``replayer`` serves honestly, but first replays a duplicate Ack and every Commit it captured earlier, on this
  connection and on earlier ones (``drop()`` makes it reconnect).
* ``forger``   sends Ack/Precommit/Commit naming ``victim`` (signed with its own key) and naming itself but signed
  by another key; never sends a valid message.
* ``silent``   acks, then says nothing more.
* ``dropout``  streams the honest prefix at once (it runs the deterministic instant engine itself), then hangs up
  mid-stream; it reconnects afterwards.
* ``late_dropout`` streams the same prefix, precommits the honest text, and hangs up when asked to reveal.
* ``wrong``    follows the protocol perfectly, but its output is junk.
* ``honest``   serves like the real miner (a control).

Everything it receives is kept in ``frames``; ``seen_before_precommit[task_id]`` is what it had received when it
sent that task's precommit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from hivemesh.engines.base import Finished, GenerationRequest, Piece
from hivemesh.engines.instant import InstantEngine
from hivemesh.identity import Identity
from hivemesh.miner.agent import ws_url
from hivemesh.protocol import wire

Behaviour = Literal[
    "garbage",
    "flood",
    "liar",
    "copycat",
    "replayer",
    "forger",
    "silent",
    "dropout",
    "late_dropout",
    "wrong",
    "honest",
]

_S = TypeVar("_S", wire.Hello, wire.Ack, wire.Precommit, wire.Commit)

FLOOD = 50  # garbage frames the ``flood`` behaviour sends right after it joins
JUNK = "definitely not what the model said"


@dataclass
class Honest:
    """What an honest instant miner produces for an Assign."""

    pieces: list[str]
    finished: Finished

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def honest_output(a: wire.Assign) -> Honest:
    """Run the deterministic instant engine on the same request, as every honest miner does."""
    req = GenerationRequest(model=a.model, kind=a.kind, params=a.params, messages=a.messages, prompt=a.prompt)
    pieces: list[str] = []
    finished: Finished | None = None
    async for ev in InstantEngine(a.model).generate(req):
        if isinstance(ev, Piece):
            pieces.append(ev.text)
        else:
            finished = ev
    assert finished is not None
    return Honest(pieces, finished)


def digest(salt: bytes, output: str) -> str:
    return hashlib.sha256(salt + output.encode()).hexdigest()


@dataclass
class _Job:
    assign: wire.Assign
    honest: Honest
    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    committed: str = ""  # the output the precommit digest is over
    reveal: asyncio.Future[None] | None = None


class Rogue:
    def __init__(
        self,
        router_url: str,
        behaviour: Behaviour,
        *,
        identity: Identity | None = None,
        model: str = "instant-echo",
        victim: str | None = None,
        reconnect: bool = True,
    ) -> None:
        self.url = ws_url(router_url)
        self.behaviour = behaviour
        self.identity = identity or Identity.generate()
        self.model = model
        self.victim = victim  # the node a forger pretends to be
        self.other_key = Identity.generate()  # a key that is not this node's
        self.ws: ClientConnection | None = None
        self.nonce = ""
        self.connections = 0  # Welcomes received so far
        self.reconnect = reconnect
        self.closes: list[
            tuple[int | None, str | None]
        ] = []  # (code, reason) the router closed each one with
        self.frames: list[str] = []
        self.assigned: dict[str, wire.Assign] = {}
        self.seen_before_precommit: dict[str, list[str]] = {}
        self.captured: list[str] = []  # raw signed Commit frames sent earlier (any connection)
        self.jobs: dict[str, _Job] = {}
        self.oob: dict[str, asyncio.Future[str]] = {}  # copycat: answers handed over out of band
        self.sent: list[tuple[str, str]] = []  # (task_id, what) for every misdeed, in order
        self._welcome = asyncio.Event()  # set (and replaced) at every Welcome
        self._closed = asyncio.Event()  # set (and replaced) whenever a connection ends

    @property
    def address(self) -> str:
        return self.identity.address

    # ------------------------------------------------------------------ control, from the test

    async def run(self) -> None:
        """Connect, and (unless ``reconnect`` is off) reconnect whenever the connection ends, until cancelled."""
        while True:
            try:
                async with connect(self.url, max_size=wire.MAX_FRAME, open_timeout=10) as ws:
                    self.ws = ws
                    await self._session(ws)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
                pass
            finally:
                if self.ws is not None:
                    self.closes.append((self.ws.close_code, self.ws.close_reason))
                self.ws = None
                self._closed.set()
                self._closed = asyncio.Event()
            if not self.reconnect:
                return
            await asyncio.sleep(0)

    async def drop(self) -> None:
        """Hang up; ``run`` dials again. Returns once the new connection is welcomed."""
        n = self.connections
        assert self.ws is not None
        await self.ws.close()
        await self.wait_connections(n + 1)

    async def wait_connections(self, n: int) -> None:
        """Until the router has welcomed this node ``n`` times (at most 10 s)."""
        async with asyncio.timeout(10):
            while self.connections < n:
                await self._welcome.wait()

    async def wait_closes(self, n: int) -> None:
        """Until ``n`` of this node's connections have ended (at most 10 s)."""
        async with asyncio.timeout(10):
            while len(self.closes) < n:
                await self._closed.wait()

    def hand(self, task_id: str, text: str) -> None:
        """Copycat: give it another miner's answer, after the fact."""
        self.oob.setdefault(task_id, asyncio.get_running_loop().create_future()).set_result(text)

    # ------------------------------------------------------------------ the session

    async def _session(self, ws: ClientConnection) -> None:
        raw = await ws.recv()
        self.frames.append(str(raw))
        challenge = wire.decode_to_miner(raw)
        assert isinstance(challenge, wire.Challenge)
        self.nonce = challenge.nonce
        hello = wire.Hello(
            node=self.address,
            nonce=self.nonce,
            models=(wire.ModelCard(id=self.model, engine="instant", context_length=8192),),
            capacity=64,
            version="rogue",
        )
        await ws.send(wire.encode(self._signed(hello)))
        raw = await ws.recv()
        self.frames.append(str(raw))
        if not isinstance(wire.decode_to_miner(raw), wire.Welcome):
            return
        self.connections += 1
        self._welcome.set()
        self._welcome = asyncio.Event()
        if self.behaviour == "flood":
            for _ in range(FLOOD):
                await ws.send("this is not json either")
        async for raw in ws:
            self.frames.append(str(raw))
            msg = wire.decode_to_miner(raw)
            if isinstance(msg, wire.Assign):
                self.assigned[msg.task_id] = msg
                await self._on_assign(ws, msg)
            elif isinstance(msg, wire.RevealRequest):
                job = self.jobs.get(msg.task_id)
                if job is not None:
                    job.reveal = asyncio.ensure_future(self._on_reveal(ws, job))
            elif isinstance(msg, wire.Ping):
                await ws.send(wire.encode(wire.Pong(nonce=msg.nonce)))

    def _signed(self, msg: _S, key: Identity | None = None) -> _S:
        sig = (key or self.identity).sign(wire.signing_payload(msg, self.nonce))
        return msg.model_copy(update={"sig": sig})

    def _ack(self, tid: str, node: str | None = None, key: Identity | None = None) -> str:
        return wire.encode(self._signed(wire.Ack(task_id=tid, node=node or self.address), key))

    def _precommit(self, job: _Job, output: str, node: str | None = None, key: Identity | None = None) -> str:
        job.committed = output
        pre = wire.Precommit(
            task_id=job.assign.task_id,
            node=node or self.address,
            digest=digest(job.salt, output),
            usage=job.honest.finished.usage,
            finish_reason=job.honest.finished.finish_reason,
            elapsed_ms=1,
        )
        return wire.encode(self._signed(pre, key))

    def _commit(
        self,
        job: _Job,
        output: str,
        salt: bytes | None = None,
        node: str | None = None,
        key: Identity | None = None,
    ) -> str:
        commit = wire.Commit(
            task_id=job.assign.task_id,
            node=node or self.address,
            output=output,
            salt=(salt or job.salt).hex(),
            usage=job.honest.finished.usage,
            finish_reason=job.honest.finished.finish_reason,
            elapsed_ms=1,
        )
        return wire.encode(self._signed(commit, key))

    async def _send_precommit(self, ws: ClientConnection, job: _Job, output: str) -> None:
        self.seen_before_precommit[job.assign.task_id] = list(self.frames)
        await ws.send(self._precommit(job, output))

    async def _on_assign(self, ws: ClientConnection, a: wire.Assign) -> None:
        tid = a.task_id
        job = self.jobs[tid] = _Job(a, await honest_output(a))
        b = self.behaviour
        if b == "garbage":
            for frame in garbage_frames(tid, self.address):
                await ws.send(frame)
                self.sent.append((tid, "garbage"))
        elif b in ("dropout", "late_dropout"):
            p = job.honest.pieces
            prefix = (p[0] + p[1], p[2], p[3])  # a distinctive first chunk, so the user can see who led
            for i, text in enumerate(prefix):
                await ws.send(wire.encode(wire.Delta(task_id=tid, index=i, text=text)))
            if b == "dropout":
                self.sent.append((tid, "dropout"))
                await ws.close()
                return
            await ws.send(self._ack(tid))
            await self._send_precommit(
                ws, job, job.honest.text
            )  # a true precommit; it hangs up at the reveal
        elif b == "forger":
            assert self.victim is not None
            v, k = self.victim, self.other_key
            forged = [
                self._ack(tid, node=v),  # names the victim, signed by me
                self._precommit(job, JUNK, node=v),
                self._commit(job, JUNK, node=v),
                self._ack(tid, key=k),  # names me, signed by another key
                self._precommit(job, job.honest.text, key=k),
                self._commit(job, job.honest.text, key=k),
                wire.encode(wire.Ack(task_id=tid, node=self.address, sig="0x" + "ab" * 65)),  # no signature
            ]
            for frame in forged:
                await ws.send(frame)
                self.sent.append((tid, "forged"))
        else:
            await ws.send(self._ack(tid))
            if b == "silent":
                return
            if b == "replayer":
                await ws.send(self._ack(tid))  # the same signed ack again
                self.sent.append((tid, "duplicate ack"))
                for frame in self.captured:
                    await ws.send(frame)
                    self.sent.append((tid, "replayed commit"))
            output = {"liar": JUNK, "copycat": "", "wrong": JUNK}.get(b, job.honest.text)
            await self._send_precommit(ws, job, output)

    async def _on_reveal(self, ws: ClientConnection, job: _Job) -> None:
        b = self.behaviour
        tid = job.assign.task_id
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            if b == "late_dropout":  # every other miner has finished by now: it dies just before revealing
                self.sent.append((tid, "dropout"))
                await ws.close()
                return
            if b == "liar":
                await ws.send(self._commit(job, job.honest.text))  # not what the digest was over
            elif b == "copycat":
                copied = await self.oob.setdefault(tid, asyncio.get_running_loop().create_future())
                await ws.send(self._commit(job, copied, salt=secrets.token_bytes(16)))
            else:
                frame = self._commit(job, job.committed)
                self.captured.append(frame)
                await ws.send(frame)
            self.sent.append((tid, "commit"))


def garbage_frames(task_id: str, node: str) -> list[str]:
    """Frames a broken or hostile miner might send: each is malformed in its own way."""

    def j(obj: object) -> str:
        return orjson.dumps(obj).decode()

    return [
        "this is not json",
        "{",
        j([1, 2, 3]),
        j({"type": "no-such-message", "task_id": task_id}),
        j({"type": "ack", "task_id": task_id}),  # no node
        j({"type": "ack", "task_id": task_id, "node": node, "sig": "", "extra": 1}),  # unknown field
        j({"type": "precommit", "task_id": task_id, "node": node, "digest": "zz", "usage": {}}),
        wire.encode(wire.Delta(task_id=task_id, index=5, text="out of order")),  # well-formed, wrong index
    ]


async def try_hello(router_url: str, make_hello: Callable[[wire.Challenge], str]) -> tuple[int | None, str]:
    """Open a connection, answer the Challenge with ``make_hello(challenge)``; return the router's close code and
    reason (or None and the first frame, if it did not close the connection)."""
    async with connect(ws_url(router_url), open_timeout=10) as ws:
        challenge = wire.decode_to_miner(await ws.recv())
        assert isinstance(challenge, wire.Challenge)
        await ws.send(make_hello(challenge))
        try:
            frame = await asyncio.wait_for(ws.recv(), 10)
        except websockets.exceptions.ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else None), (exc.rcvd.reason if exc.rcvd else "")
        return None, str(frame)


def signed_hello(
    challenge: wire.Challenge, *, claims: str, signer: Identity, nonce: str | None = None
) -> str:
    hello = wire.Hello(
        node=claims,
        nonce=challenge.nonce if nonce is None else nonce,
        models=(wire.ModelCard(id="instant-echo", engine="instant", context_length=8192),),
        capacity=4,
    )
    sig = signer.sign(wire.signing_payload(hello, challenge.nonce if nonce is None else nonce))
    return wire.encode(hello.model_copy(update={"sig": sig}))
