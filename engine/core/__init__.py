"""Core types every layer shares: errors, memory types, sampling settings, paths.

Leaves: nothing here imports another KV Deck package.
"""
