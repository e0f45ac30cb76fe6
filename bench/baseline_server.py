"""The floor: a bare ASGI app on the router's own server stack (uvicorn + httptools + uvloop) that reads the
request body and answers every POST with the same canned chat.completion JSON (``GET`` anything: a health JSON).

    python -m bench.baseline_server --port 9000 [--body-file canned.json]

Used by ``bench.overhead`` as the client's floor and as the OpenAI-compatible upstream behind LiteLLM.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

DEFAULT_BODY = {
    "id": "chatcmpl-baseline",
    "object": "chat.completion",
    "created": 0,
    "model": "instant-echo",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "hotel india delta alpha delta alpha delta bravo",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10},
    "system_fingerprint": "baseline",
}


def make_app(body: bytes) -> Any:
    post_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    health = orjson.dumps({"status": "ok", "miners": 1})
    get_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(health)).encode())]
    models = orjson.dumps(
        {
            "object": "list",
            "data": [{"id": "instant-echo", "object": "model", "created": 0, "owned_by": "baseline"}],
        }
    )
    models_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(models)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the body, as any real handler must
            msg = await receive()
            more = msg.get("more_body", False)
        if scope["method"] == "POST":
            await send({"type": "http.response.start", "status": 200, "headers": post_headers})
            await send({"type": "http.response.body", "body": body})
        elif scope["path"].endswith("/models"):
            await send({"type": "http.response.start", "status": 200, "headers": models_headers})
            await send({"type": "http.response.body", "body": models})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": get_headers})
            await send({"type": "http.response.body", "body": health})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--body-file", type=Path, help="the canned response body (default: a small chat.completion)"
    )
    args = ap.parse_args()
    if args.body_file:
        body = args.body_file.read_bytes()
        try:  # a fresh 'created' keeps OpenAI clients happy; same size as the captured body
            data = orjson.loads(body)
            data["created"] = int(time.time())
            body = orjson.dumps(data)
        except orjson.JSONDecodeError:
            pass
    else:
        body = orjson.dumps(DEFAULT_BODY)

    import uvicorn

    uvicorn.run(
        make_app(body),
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
