"""Wire types only: the OpenAI edge, router<->miner messages. Imports nothing else of hivemesh."""
