"""hivemesh.ledger: the money layer. Double-entry, hash-chained, on SQLite or PostgreSQL.

Public API: ``Ledger`` (open it with ``await Ledger.open(url)``), its result types, API keys and rate limits,
signed checkpoints of its chain heads (``Checkpoint``, see ``checkpoint.py``). Reserves, settlements and releases
are group-committed (``holds.py``, ``group.py``). Amounts are ``int`` in the smallest unit; ``COR`` is one COR
(10**18).
"""

from hivemesh.ledger.accounts import COR, REWARD_POOL, TREASURY, WORLD, EntryKind
from hivemesh.ledger.book import cor as format_cor
from hivemesh.ledger.chain import VerifyReport
from hivemesh.ledger.checkpoint import Checkpoint
from hivemesh.ledger.keys import KeyInfo, KeyStore
from hivemesh.ledger.ledger import Ledger, account_name
from hivemesh.ledger.limits import LimitState, RateLimiter
from hivemesh.ledger.queries import EntryView
from hivemesh.ledger.views import AccountView, HoldView, Settlement, StakePools, Unstaking

__all__ = [
    "COR",
    "REWARD_POOL",
    "TREASURY",
    "WORLD",
    "AccountView",
    "Checkpoint",
    "EntryKind",
    "EntryView",
    "HoldView",
    "KeyInfo",
    "KeyStore",
    "Ledger",
    "LimitState",
    "RateLimiter",
    "Settlement",
    "StakePools",
    "Unstaking",
    "VerifyReport",
    "account_name",
    "format_cor",
]
