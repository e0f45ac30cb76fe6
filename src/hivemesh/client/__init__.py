"""A Python client for the router's Session API (``/api/v1``): sessions, task records with each miner's part,
submissions and balances. The OpenAI surface (``/v1``) is for the official ``openai`` SDK; this is the rest.

    from hivemesh.client import Client

    with Client("http://127.0.0.1:8000", api_key="hm-...") as hm:
        session = hm.create_session(name="research", redundancy=3, quorum=2, mode="exact")
        done = hm.submit(session.id, messages=[{"role": "user", "content": "Hi"}], max_tokens=32)
        record = hm.task(session.id, done.task_id)   # PoUW history, each miner's precommit and reveal
"""

from hivemesh.client.sessions import Account, Client, Completion, Session, Task

__all__ = ["Account", "Client", "Completion", "Session", "Task"]
