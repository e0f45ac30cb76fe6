"""Server-sent events in the OpenAI shape: ``data: <json>\\n\\n`` frames, ending with ``data: [DONE]``."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def frame(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
