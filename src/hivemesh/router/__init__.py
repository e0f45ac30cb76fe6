"""hivemesh.router."""
