"""Bridges between engine services and the window: one QObject per service (the runtime, the
API server, speculative decoding), its events delivered on the GUI thread as signals."""
