"""hivemesh.ledger."""
