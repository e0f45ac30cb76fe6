"""The OpenAI edge: request bodies as clients send them.

Lenient about fields OpenAI does not define (accepted and ignored: clients add their own), strict about OpenAI
parameters the network does not serve yet: ``unserved()`` names the first one a request sets to a value that
would change the answer, and the router refuses it with a 400 naming that parameter instead of answering as if
it had never been sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# ``seed``: OpenAI documents a signed 64-bit integer; unsigned 64-bit values (which some clients send) are taken
# too. Seeds reach miners and the task record reduced into [0, 2**63) (``seed % 2**63``, so -1 -> 2**63-1): they
# fit one signed 64-bit column and every miner gets the same non-negative seed. Engines with a narrower seed map
# it themselves, the same way on every miner.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
SEED_SPACE = 2**63


def _not_yet(param: str, what: str = "") -> tuple[str, str]:
    return param, (
        f"'{param}'{what} is not supported yet: the miners' engines do not serve it, and hivemesh refuses the "
        "request rather than answer as if the parameter had not been sent. Remove it to run the request."
    )


class _Edge(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Edge):
    include_usage: bool = False


class TextPart(_Edge):
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionSpec(_Edge):
    name: FunctionName
    description: str = Field(default="", max_length=4096)
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object


class Tool(_Edge):
    type: Literal["function"]
    function: FunctionSpec


class CalledFunction(_Edge):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCall(_Edge):
    id: str = ""
    type: Literal["function"] = "function"
    function: CalledFunction


class NamedFunction(_Edge):
    name: FunctionName


class NamedToolChoice(_Edge):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Edge):
    name: str = Field(default="response", max_length=64)
    description: str = ""
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Edge):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Consensus(BaseModel):
    """The ``hivemesh`` extension field: per-request consensus controls (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")
    redundancy: int | None = Field(default=None, ge=1, le=16)
    disagreement_policy: Literal["best_effort", "fail", "return_all"] = "best_effort"


class InMessage(_Edge):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[Annotated[TextPart, Field(discriminator="type")]] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


Stop = str | list[str] | None


class _Sampling(_Edge):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=1, ge=1, le=128)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: str | None = None
    session_id: str | None = None  # hivemesh: run in this session instead of the key's default one
    # OpenAI parameters accepted only at the values that leave the answer as the engines make it (``unserved``)
    logit_bias: dict[str, float] | None = None
    hivemesh: Consensus | None = None  # hivemesh: per-request consensus controls (README, API)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Stop) -> Stop:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not SEED_MIN <= v <= SEED_MAX:
            raise ValueError(f"seed must be a 64-bit integer, between {SEED_MIN} and {SEED_MAX}")
        return v

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def engine_seed(self) -> int | None:
        """The user's seed reduced into ``[0, SEED_SPACE)``, the same way for every miner (``-1`` -> ``2**63-1``)."""
        return None if self.seed is None else self.seed % SEED_SPACE

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def unserved(self) -> tuple[str, str] | None:
        """``(param, message)`` for the first OpenAI parameter set to something the network cannot serve yet."""
        if self.n is not None and self.n > 1:
            return "n", "n > 1 is not supported yet: send one request per choice (with different seeds)."
        if self.logit_bias:
            return _not_yet("logit_bias")
        return None

    def top_logprobs_wanted(self) -> int | None:
        """How many alternatives per token to report, or None when logprobs are not asked for."""
        return None


class ChatCompletionRequest(_Sampling):
    messages: list[InMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # at most one call is made per answer, which any value allows
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def unserved(self) -> tuple[str, str] | None:
        if self.functions:
            return "functions", "'functions' is deprecated and not served: send 'tools' instead."
        if self.function_call not in (None, "none", "auto"):
            return (
                "function_call",
                "'function_call' is deprecated and not served: send 'tool_choice' instead.",
            )
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "'top_logprobs' is not served without 'logprobs' set to true."
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            return "tool_choice", "'tool_choice' is not served without 'tools'."
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
            return (
                "response_format",
                "'response_format' of type 'json_schema' needs its 'json_schema' object.",
            )
        if fmt is not None and fmt.type != "text" and self.tools and self.tool_choice != "none":
            return "response_format", "'response_format' and 'tools' cannot constrain one answer together."
        return super().unserved()


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(
        cls, v: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(v, list):
            if not v:
                raise ValueError("the prompt list is empty")
            if not isinstance(v[0], str):
                raise ValueError("token-id prompts are not supported: the router has no tokenizer; send text")
            if len(v) > 1:
                raise ValueError(
                    "one prompt per request is supported (a list of one string works); "
                    "send one request per prompt"
                )
        text = v if isinstance(v, str) else v[0]
        if isinstance(text, str) and not text:
            raise ValueError("the prompt is empty: there is nothing to complete")
        return v

    def text(self) -> str:
        p = self.prompt[0] if isinstance(self.prompt, list) else self.prompt
        assert isinstance(p, str)  # the validator let only strings through
        return p

    def token_limit(self) -> int | None:
        return self.max_tokens

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def unserved(self) -> tuple[str, str] | None:
        if self.echo:
            return _not_yet("echo")
        if self.best_of is not None and self.best_of > 1:
            return _not_yet("best_of")
        if self.suffix:
            return _not_yet("suffix")
        return super().unserved()


class EmbeddingRequest(_Edge):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def model_entry(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "hivemesh", **extra}


# ---------------------------------------------------------------- the client WebSocket (/api/v1/ws)
# Client -> router messages, one JSON object per text frame. Bodies are the REST bodies (``ChatCompletionRequest``,
# ``CompletionRequest``), validated the same way once the socket has them.

WsId = Annotated[str, Field(min_length=1, max_length=128)]


class WsAuth(BaseModel):
    """The first message, when the upgrade request carried no ``Authorization`` header."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["auth"]
    api_key: str = Field(min_length=1, max_length=512)


class WsSubmit(BaseModel):
    """Run ``body`` (a chat body with ``messages`` or a completion body with ``prompt``) as the task ``id``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["submit"]
    id: WsId  # chosen by the client; every reply about this task carries it
    kind: Literal["chat", "completion"] | None = None  # default: chat when the body has ``messages``
    session_id: str | None = None
    body: dict[str, Any]


class WsCancel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["cancel"]
    id: WsId


WsMessage = Annotated[WsAuth | WsSubmit | WsCancel, Field(discriminator="type")]
