"""hivemesh.validator."""
