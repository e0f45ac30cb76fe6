"""hivemesh.cli."""
