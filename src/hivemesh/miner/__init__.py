"""hivemesh.miner."""
