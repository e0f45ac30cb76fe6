"""hivemesh.store."""
