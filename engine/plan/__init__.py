"""Memory planning: context resolution, KV and state sizes, compute buffers, CPU repacking,
the analytic plan per device and component, fit, cache rules in words, and llama.cpp's own
measured sizes parsed from its log.
"""
