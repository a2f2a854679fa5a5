"""Everything that runs inside the llama.cpp child process (`python -m engine.child`).

The only package that imports `llama_cpp`: a native crash here ends the child, never the
window or the CLI.
"""
