"""The OpenAPI 3.1 document of the router's public API (the OpenAI routes and the Session API), served at
``/openapi.json``. Request bodies are the pydantic models the handlers validate with, so the document cannot drift
from what the router accepts; every error is the OpenAI error body (``ErrorBody``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from hivemesh import __version__
from hivemesh.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from hivemesh.router.session_api import AdminDeposit, Amount, CreateKey, CreateSession, SubmitPrompt

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error the router answers, as OpenAI sends it."""

    error: ErrorDetail


BODIES: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    CreateSession,
    SubmitPrompt,
    Amount,
    AdminDeposit,
    CreateKey,
    ErrorBody,
)

# (method, path, summary, request body model or None, path parameters, query parameters, streams)
Op = tuple[str, str, str, type[BaseModel] | None, tuple[str, ...], tuple[str, ...], bool]
OPERATIONS: tuple[Op, ...] = (
    ("post", "/v1/chat/completions", "Chat completion (OpenAI)", ChatCompletionRequest, (), (), True),
    ("post", "/v1/completions", "Text completion (OpenAI)", CompletionRequest, (), (), True),
    ("get", "/v1/models", "List models (OpenAI)", None, (), (), False),
    ("get", "/v1/models/{model}", "Retrieve a model (OpenAI)", None, ("model",), (), False),
    ("post", "/v1/embeddings", "Embeddings (OpenAI)", EmbeddingRequest, (), (), False),
    ("get", "/api/v1/info", "Router info", None, (), (), False),
    ("get", "/api/v1/status", "Router status", None, (), (), False),
    ("get", "/api/v1/miners", "Every node of the network, with the router holding it", None, (), (), False),
    ("post", "/api/v1/sessions", "Create a session", CreateSession, (), (), False),
    ("get", "/api/v1/sessions", "List your sessions", None, (), (), False),
    ("get", "/api/v1/sessions/{session_id}", "A session", None, ("session_id",), (), False),
    ("delete", "/api/v1/sessions/{session_id}", "Deactivate a session", None, ("session_id",), (), False),
    (
        "post",
        "/api/v1/sessions/{session_id}/deactivate",
        "Deactivate a session",
        None,
        ("session_id",),
        (),
        False,
    ),
    (
        "get",
        "/api/v1/sessions/{session_id}/tasks",
        "A session's tasks",
        None,
        ("session_id",),
        ("limit",),
        False,
    ),
    ("get", "/api/v1/tasks/{session_id}", "A session's tasks", None, ("session_id",), ("limit",), False),
    (
        "get",
        "/api/v1/tasks/{session_id}/{task_id}",
        "A task with each miner's part",
        None,
        ("session_id", "task_id"),
        (),
        False,
    ),
    (
        "post",
        "/api/v1/sessions/{session_id}/deposit",
        "Fund a session",
        Amount,
        ("session_id",),
        (),
        False,
    ),
    ("get", "/api/v1/accounts/{address}", "Your account", None, ("address",), (), False),
    ("post", "/api/v1/admin/keys", "Create an API key (admin)", CreateKey, (), (), False),
    ("post", "/api/v1/admin/deposits", "Deposit into an account (admin)", AdminDeposit, (), (), False),
    ("post", "/api/v1/completions", "Submit a prompt to a session", SubmitPrompt, (), (), True),
    (
        "post",
        "/api/v1/completions/{session_id}",
        "Submit a prompt to a session",
        SubmitPrompt,
        ("session_id",),
        (),
        True,
    ),
)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR = {
    "description": "An error, in the OpenAI shape",
    "content": _json({"$ref": REF.format(model="ErrorBody")}),
}


def _operation(op: Op) -> dict[str, Any]:
    method, path, summary, body, path_params, query, streams = op
    ok: dict[str, Any] = {"description": "Success", "content": _json({"type": "object"})}
    if streams:
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    out: dict[str, Any] = {
        "summary": summary,
        "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
        "responses": {
            "201" if path == "/api/v1/sessions" and method == "post" else "200": ok,
            "default": _ERROR,
        },
    }
    params = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for p in path_params
    ]
    params += [{"name": q, "in": "query", "required": False, "schema": {"type": "integer"}} for q in query]
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": True, "content": _json({"$ref": REF.format(model=body.__name__)})}
    return out


def document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in BODIES], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op[1], {})[op[0]] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hivemesh router",
            "version": __version__,
            "description": "OpenAI-compatible inference with proof of inference, and the Session API.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    }
