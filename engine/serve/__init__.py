"""The OpenAI-compatible API server (`kvdeck serve`, Server menu)."""
