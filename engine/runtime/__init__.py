"""The parent side of the runtime: the host that starts and talks to the llama.cpp child
process, what the installed runtime can do, the exact plan (a dry run) and live telemetry.
"""
