"""What KV Deck keeps on disk: the chat store (SQLite, with an in-memory fallback) and the
library of models found on this computer.
"""
