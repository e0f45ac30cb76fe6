"""A chat request's tools and response_format become the task's constraint and messages; answers become calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hivemesh.errors import InvalidRequest
from hivemesh.protocol.openai import ChatCompletionRequest
from hivemesh.router.structured import looks_like_call, shape, tool_call

pytest.importorskip("llama_cpp")  # the router checks schemas with llama-cpp-python's converter

F = {
    "type": "function",
    "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}},
}
G = {"type": "function", "function": {"name": "g"}}


def body(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}
    )


def test_required_tools_constrain_to_one_call_over_the_offered_functions() -> None:
    s = shape(body(tools=[F, G], tool_choice="required"))
    assert s.tools and s.param == "tools" and s.constraint is not None and not s.constraint.text_allowed
    schema = json.loads(s.constraint.json_schema)
    assert [a["properties"]["name"]["const"] for a in schema["oneOf"]] == ["f", "g"]
    assert schema["oneOf"][1]["properties"]["arguments"] == {"type": "object"}
    assert s.messages[0].role == "system" and '"name": "f"' in s.messages[0].content
    assert "must call" in s.messages[0].content and s.messages[1].content == "hi"


def test_auto_allows_text_and_a_named_choice_allows_only_that_function() -> None:
    auto = shape(body(tools=[F, G]))
    assert auto.constraint is not None and auto.constraint.text_allowed
    named = shape(body(tools=[F, G], tool_choice={"type": "function", "function": {"name": "g"}}))
    assert named.constraint is not None
    assert json.loads(named.constraint.json_schema)["properties"]["name"] == {"const": "g"}


def test_none_describes_the_tools_without_constraining() -> None:
    s = shape(body(tools=[F], tool_choice="none"))
    assert s.constraint is None and not s.tools and "do not call" in s.messages[0].content


def test_response_formats_and_a_callers_system_message() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    s = shape(body(messages=msgs, response_format={"type": "json_object"}))
    assert s.constraint is not None and json.loads(s.constraint.json_schema) == {"type": "object"}
    assert len(s.messages) == 2 and s.messages[0].content.startswith("Be brief.\n\nAnswer with a JSON object")
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    js = shape(body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert js.constraint is not None and list(json.loads(js.constraint.json_schema)["properties"]) == [
        "b",
        "a",
    ]


def test_earlier_calls_are_shown_as_json() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ]
    s = shape(body(messages=msgs, tools=[F]))
    assert json.loads(s.messages[2].content) == {"name": "f", "arguments": {"x": 1}}
    assert (s.messages[3].role, s.messages[3].content) == ("tool", "2")


def test_unknown_named_function_is_refused() -> None:
    with pytest.raises(InvalidRequest) as ei:
        shape(body(tools=[F], tool_choice={"type": "function", "function": {"name": "zz"}}))
    assert ei.value.param == "tool_choice"


def test_answers_that_are_calls() -> None:
    call = tool_call('{"name": "f", "arguments": {"x": 1}}', "task_abc")
    assert call == {"id": "call_abc", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    assert tool_call("Paris is sunny.", "task_abc") is None and tool_call('{"x": 1}', "t") is None
    assert looks_like_call('  {"na') and not looks_like_call("Paris {")
