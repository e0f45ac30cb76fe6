"""A Python client for the router's Session API (``/api/v1``): sessions, task records with each miner's part,
submissions and balances. The OpenAI surface (``/v1``) is for the official ``openai`` SDK; this is the rest.

    from hivemesh.client import Client

    with Client("http://127.0.0.1:8000", api_key="hm-...") as hm:
        session = hm.create_session(name="research", redundancy=3, quorum=2, mode="exact")
        done = hm.submit(session.id, messages=[{"role": "user", "content": "Hi"}], max_tokens=32)
        record = hm.task(session.id, done.task_id)   # PoUW history, each miner's precommit and reveal
        for part in hm.stream(session.id, prompt="Once upon"):   # Delta pieces, then the Completion
            print(part.text if isinstance(part, Delta) else part.verdict)

``AsyncClient`` has the same methods as coroutines (``stream`` as an async iterator).
"""

from hivemesh.client.aio import AsyncClient
from hivemesh.client.sessions import Account, Client, Completion, Delta, Session, Task

__all__ = ["Account", "AsyncClient", "Client", "Completion", "Delta", "Session", "Task"]
