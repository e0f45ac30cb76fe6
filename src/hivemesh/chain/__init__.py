"""hivemesh.chain: the EVM side of the ledger.

Vyper contracts shipped compiled (``contracts/``: NodePool, SessionPayment, CheckpointAnchor; ``artifacts.py``),
a web3 client with local signing and nonce tracking (``client.py``), deployment (``deploy.py``) and a local anvil
(``anvil.py``). The ledger's ``evm`` back-end (``hivemesh.ledger.evm``) is built on these.
"""

from hivemesh.chain.client import Chain, Deployment

__all__ = ["Chain", "Deployment"]
