"""hivemesh.core."""
