"""hivemesh: a community-powered, verifiable AI inference network."""

__version__ = "0.1.0"
