"""hivemesh.engines."""
