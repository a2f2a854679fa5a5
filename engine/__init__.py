"""KV Deck engine: everything that is not a widget.

Pure Python plus the llama.cpp runtime (which only ever runs in a child process).
This package never imports Qt, so it serves the CLI, the GUI and headless tools alike.
"""
