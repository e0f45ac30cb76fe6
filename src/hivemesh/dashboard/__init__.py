"""hivemesh.dashboard."""
