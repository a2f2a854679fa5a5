"""How many CPU threads a context gets when the user names none (engine.child.session).

With every layer on a GPU the CPU only gathers token embeddings, and one thread spares the
batch loop's sampler threads the idle OpenMP team; everywhere else the physical cores work.
"""

from __future__ import annotations

import psutil

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from tests.helpers.runtime_host import running_host


def test_a_machine_without_a_gpu_keeps_every_physical_core(smollm2_path) -> None:
    """llama.cpp logs "offloaded 31/31 layers to GPU" on a CPU build that can offload (RPC):
    that line alone must not take the cores away from a model that runs on the CPU."""
    with running_host(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=256))) as (_, loaded):
        assert loaded is not None
        assert loaded.n_threads == (psutil.cpu_count(logical=False) or loaded.n_threads)


def test_threads_the_user_names_are_kept(smollm2_path) -> None:
    params = P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=256), n_threads=1)
    with running_host(params) as (_, loaded):
        assert loaded is not None and loaded.n_threads == 1
