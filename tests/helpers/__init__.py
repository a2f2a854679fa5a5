"""What several test modules share and that is not a fixture (fixtures live in tests/conftest.py).

Test modules import from here (``from tests.helpers.gui import new_window``), never from each
other: tests/test_layout.py checks that.

- ``cli``: run ``kvdeck`` as a separate process.
- ``gui``: open the real window, drop files on it, ask it something.
- ``runtime_host``: a runtime child started, loaded and always stopped.
- ``gguf_factory`` (+ ``gguf_families2``): tiny synthetic GGUF models, one per memory family.
- ``gguf_raw``, ``hostile_gguf``: GGUF files taken apart, and broken on purpose.
- ``llama_dry_run``: ask llama.cpp what it would allocate, in a child process
  (``tools.llama_dry_run``, shared with benchmarks/gpu_compute.py), parsed into a plan.
- ``rpc_workers``: llama.cpp RPC workers on loopback, stand-ins for foreign ones, and the skip
  for a runtime without RPC.
- ``fault_app``: the real window chatting on its own, run as a process and killed by
  tests/test_faults.py (``python -m tests.helpers.fault_app DB``).
"""
