"""Tools and structured output at the OpenAI edge: a chat request's ``tools``/``tool_choice``/``response_format``
become the task's output ``Constraint`` (what every miner's grammar enforces, generator and verifier alike) and
the messages the model reads; a constrained answer becomes OpenAI's ``message.tool_calls``.

The mapping, a pure function of the request (so it travels in the task's params and its record):

- ``response_format`` ``json_object``: any JSON object (schema ``{"type": "object"}``); ``json_schema``: the given
  schema, which the model is also shown in a system message.
- ``tools`` with ``tool_choice`` ``required`` (or a named function): the answer is one call
  ``{"name": <function>, "arguments": <object matching its parameters>}`` (``oneOf`` over the offered functions, or
  the named one); ``auto`` (the default with tools): such a call or free text that does not start with ``{``;
  ``none``: free text, the tools only described. The functions are described to the model in a system message
  placed first (merged into the caller's first system message, if any). Earlier calls in the conversation
  (assistant ``tool_calls``) are shown to the model in the same JSON form, tool results as ``tool`` messages.

An answer is a tool call when tools were offered and it parses as such a JSON object; ``finish_reason`` is then
``tool_calls``. A call cut by ``max_tokens`` stays text (``finish_reason: length``), as it cannot be parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hivemesh.engines.grammar import check, dumps_schema
from hivemesh.errors import InvalidRequest
from hivemesh.protocol.openai import ChatCompletionRequest, InMessage, Tool
from hivemesh.protocol.wire import MAX_SCHEMA, ChatMessage, Constraint

ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class Shaped:
    """What a chat request asks of the answer's shape."""

    messages: tuple[ChatMessage, ...]
    constraint: Constraint | None
    param: str | None  # the parameter that asked for the constraint (named in refusals)
    tools: bool  # the answer may be a tool call


def shape(body: ChatCompletionRequest) -> Shaped:
    """The task's messages and constraint for ``body`` (module docstring). Raises InvalidRequest (400)."""
    choice = body.tool_choice or ("auto" if body.tools else "none")
    tools = list(body.tools or []) if choice != "none" else []
    if not isinstance(choice, str):
        named = [t for t in tools if t.function.name == choice.function.name]
        if not named:
            raise InvalidRequest(
                f"tool_choice names function {choice.function.name!r}, which is not in 'tools'",
                param="tool_choice",
            )
        tools = named
    system: list[str] = []
    constraint, param = None, None
    if tools:
        system.append(_tools_prompt(body.tools or [], required=choice != "auto"))
        alternatives = [_call_schema(t) for t in tools]
        schema = alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}
        constraint, param = _constraint(schema, "tools", text_allowed=choice == "auto"), "tools"
    elif body.tools:
        system.append(_tools_prompt(body.tools, required=False, callable_=False))
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        constraint, param = _constraint(ANY_OBJECT, "response_format"), "response_format"
        system.append("Answer with a JSON object only.")
    elif fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        schema = fmt.json_schema.schema_ or ANY_OBJECT
        constraint, param = _constraint(schema, "response_format"), "response_format"
        system.append(
            "Answer with a JSON object only, matching this JSON schema:\n"
            + json.dumps(schema, ensure_ascii=False)
        )
    return Shaped(_messages(body.messages, "\n\n".join(system)), constraint, param, bool(tools))


def tool_call(text: str, task_id: str) -> dict[str, Any] | None:
    """The OpenAI ``tool_calls`` entry an answer makes, or None when it is not a call."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", {})
    return {
        "id": "call_" + task_id.removeprefix("task_")[:24],
        "type": "function",
        "function": {"name": value["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }


def looks_like_call(text: str) -> bool:
    """Whether a streamed answer (so far) is a tool call rather than text: its first non-blank character."""
    return text.lstrip().startswith("{")


def _constraint(schema: Any, param: str, *, text_allowed: bool = False) -> Constraint:
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    text = dumps_schema(schema)
    if len(text) > MAX_SCHEMA:
        raise InvalidRequest(f"the JSON schema is longer than {MAX_SCHEMA} characters", param=param)
    c = Constraint(json_schema=text, text_allowed=text_allowed)
    if (why := check(c)) is not None:
        raise InvalidRequest(why, param=param)
    return c


def _call_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": tool.function.parameters or ANY_OBJECT,
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _tools_prompt(tools: list[Tool], *, required: bool, callable_: bool = True) -> str:
    listed = "\n".join(
        json.dumps(
            {
                "name": t.function.name,
                "description": t.function.description,
                "parameters": t.function.parameters or ANY_OBJECT,
            },
            ensure_ascii=False,
        )
        for t in tools
    )
    if not callable_:
        return "These functions exist, but do not call them now; answer in text.\n" + listed
    how = (
        'To call a function, answer only with a JSON object {"name": <function name>, "arguments": <object>}.'
    )
    when = " You must call one of them." if required else " Otherwise answer in text."
    return "You can call these functions:\n" + listed + "\n" + how + when


def _messages(messages: list[InMessage], system: str) -> tuple[ChatMessage, ...]:
    out = [ChatMessage(role=m.role, content=_content(m)) for m in messages]
    if system:
        if out and out[0].role in ("system", "developer"):
            out[0] = ChatMessage(role=out[0].role, content=out[0].content + "\n\n" + system)
        else:
            out.insert(0, ChatMessage(role="system", content=system))
    return tuple(out)


def _content(m: InMessage) -> str:
    calls = [
        json.dumps(
            {"name": c.function.name, "arguments": _arguments(c.function.arguments)}, ensure_ascii=False
        )
        for c in m.tool_calls or []
    ]
    return "\n".join([m.text(), *calls]) if m.text() and calls else (m.text() or "\n".join(calls))


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
