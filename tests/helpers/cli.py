"""``kvdeck`` run as a separate process, from this checkout, as a user's shell would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Keys `kvdeck inspect --json` always has (the CLI contract other tools read).
INSPECT_JSON_KEYS = {
    "path",
    "architecture",
    "n_layer",
    "n_ctx_train",
    "n_embd",
    "n_head",
    "n_head_kv",
    "head_dim_k",
    "head_dim_v",
    "n_swa",
    "recurrent",
    "n_vocab",
    "file_type",
    "has_chat_template",
    "file_bytes",
}


def kvdeck(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("QT_QPA_PLATFORM", None)
    return subprocess.run(
        [sys.executable, "-m", "kvdeck", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_kvdeck(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m kvdeck ARGS`` left running, its stdout and stderr piped as text (the caller
    reads its lines and ends it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kvdeck", *args],
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def weight_buffers(data_dir: Path) -> set[str]:
    """The buffer types llama.cpp loaded the weights into, as named in the log file of ``kvdeck``
    runs with ``KVDECK_DATA_DIR=data_dir`` (``load_tensors: CPU_Mapped model buffer size = ...``):
    a name ending in ``_Mapped`` is the model file mapped, any other one holds a copy."""
    text = (data_dir / "kvdeck.log").read_text(encoding="utf-8")
    return set(re.findall(r"load_tensors:\s+(\S+) model buffer size", text))
