"""Specification of `engine.gguf.inspect`: real models, llama.cpp's per-arch rules, bad files."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from engine.core.errors import ModelFileError
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from tests.helpers.cli import INSPECT_JSON_KEYS

BASE_KV: dict[str, Any] = {
    "block_count": 4,
    "context_length": 2048,
    "embedding_length": 256,
    "attention.head_count": 4,
    "attention.head_count_kv": 2,
}


def write_gguf(
    path: Path,
    arch: str = "llama",
    kv: dict[str, Any] | None = None,
    endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
) -> Path:
    """Write a tiny GGUF: BASE_KV updated by `kv` (None deletes a key), one F32 tensor.

    Keys without a `general.`/`tokenizer.` prefix get the `{arch}.` prefix. Ints become
    uint32 (uint64 when too big), lists become arrays, bools/strings stay themselves.
    """
    fields = {**BASE_KV, **(kv or {})}
    writer = gguf.GGUFWriter(str(path), arch, endianess=endianess)
    for key, value in fields.items():
        if value is None:
            continue
        full = key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"
        if isinstance(value, bool):
            writer.add_bool(full, value)
        elif isinstance(value, int):
            (writer.add_uint64 if value >= 2**32 else writer.add_uint32)(full, value)
        elif isinstance(value, str):
            writer.add_string(full, value)
        else:
            writer.add_array(full, value)
    writer.add_tensor("token_embd.weight", np.zeros((8, 256), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_model_error(path: Path, *fragments: str) -> str:
    """The inspection fails with one readable line naming the file (and the given fragments)."""
    with pytest.raises(ModelFileError) as info:
        inspect_gguf(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(path.name + " ")
    for fragment in fragments:
        assert fragment in message
    return message


# --- real models -----------------------------------------------------------------------------


def test_smollm2_metadata(smollm2_path: Path) -> None:
    info = inspect_gguf(smollm2_path)
    assert info.architecture == "llama"
    assert (info.n_layer, info.n_ctx_train, info.n_embd) == (30, 8192, 576)
    assert (info.n_head, info.n_head_kv, info.head_dim_k, info.head_dim_v) == (9, 3, 64, 64)
    assert info.n_head_per_layer == (9,) * 30 and info.n_head_kv_per_layer == (3,) * 30
    assert info.head_dim_k_swa is None and info.head_dim_v_swa is None
    assert info.n_swa == 0 and info.swa_layers == (False,) * 30
    assert not info.recurrent and not info.hybrid and info.ssm is None and info.mla is None
    assert info.n_layer_kv_from_start is None
    assert (info.n_expert, info.n_expert_used) == (0, 0)
    assert info.n_vocab == 49152 and info.tokenizer_model == "gpt2"
    assert (info.bos_token_id, info.eos_token_id, info.add_bos) == (1, 2, False)
    assert info.file_type == "Q4_1"
    assert info.has_chat_template and info.chat_template and "<|im_start|>" in info.chat_template
    assert info.name and "Smollm2" in info.name
    assert info.n_params == 134_515_008
    assert info.file_bytes == smollm2_path.stat().st_size
    assert sum(info.weight_types.values()) == info.tensor_bytes < info.file_bytes
    assert set(info.weight_types) == {"Q4_1", "Q8_0", "F32"}


def test_gemma3_metadata(gemma3_path: Path) -> None:
    info = inspect_gguf(gemma3_path)
    assert info.architecture == "gemma3"
    assert (info.n_layer, info.n_ctx_train, info.n_embd) == (18, 32768, 640)
    # key_length 256 is not n_embd / n_head (160): the explicit key must win.
    assert (info.n_head, info.n_head_kv, info.head_dim_k, info.head_dim_v) == (4, 1, 256, 256)
    assert info.n_swa == 512
    assert info.swa_layers == tuple(il % 6 < 5 for il in range(18))  # layers 5, 11, 17 full
    assert info.n_layer_kv_from_start is None and not info.recurrent and not info.hybrid
    assert info.n_vocab == 262144 and info.tokenizer_model == "llama"
    assert (info.bos_token_id, info.eos_token_id, info.add_bos) == (2, 1, True)
    assert info.file_type == "Q4_K_M"
    assert not info.has_chat_template and info.chat_template is None  # base model
    assert info.name == "Gemma 3 270m"
    assert sum(info.weight_types.values()) == info.tensor_bytes < info.file_bytes


@pytest.mark.parametrize("fixture", ["smollm2_path", "gemma3_path"])
def test_inspection_is_fast(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    inspect_gguf(path)  # warm the page cache like a second look at the same file
    start = time.perf_counter()
    inspect_gguf(path)
    assert time.perf_counter() - start < 1.0


def test_to_json_is_complete_and_serialisable(smollm2_path: Path) -> None:
    info = inspect_gguf(str(smollm2_path))
    data = info.to_json()
    assert INSPECT_JSON_KEYS <= set(data)
    assert "chat_template" not in data
    assert data["chat_template_chars"] == len(info.chat_template or "")
    assert json.loads(json.dumps(data)) == data
    assert isinstance(data["swa_layers"], list) and len(data["swa_layers"]) == 30


# --- bad files -------------------------------------------------------------------------------


def test_text_file_named_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("this is not a model, just some text that is long enough\n")
    assert_model_error(path, "not a GGUF file", "bad magic")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    assert_model_error(path, "empty")


def test_truncated_real_model(tmp_path: Path, smollm2_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(smollm2_path.read_bytes()[:1000])
    assert_model_error(path, "truncated")


def test_missing_tensor_data(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "short.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-16])
    assert_model_error(path, "truncated", "token_embd.weight")


def test_missing_file(tmp_path: Path) -> None:
    assert_model_error(tmp_path / "nowhere.gguf", "does not exist")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "models.gguf"
    folder.mkdir()
    assert_model_error(folder, "directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "locked.gguf")
    path.chmod(0)
    try:
        assert_model_error(path, "cannot be read")
    finally:
        path.chmod(0o644)


def test_missing_block_count(tmp_path: Path) -> None:
    assert_model_error(write_gguf(tmp_path / "m.gguf", kv={"block_count": None}), "llama.block_count")


def test_missing_architecture(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    data = path.read_bytes().replace(b"general.architecture", b"general.arkitecture_")
    path.write_bytes(data)
    assert_model_error(path, "general.architecture")


@pytest.mark.parametrize(
    "kv, fragment",
    [
        ({"attention.head_count": 0, "attention.head_count_kv": 0}, "head count"),
        ({"attention.head_count": 0}, "head"),
        ({"attention.head_count": 9, "attention.head_count_kv": 4}, "9 attention heads but 4 KV"),
        ({"attention.head_count_kv": 8}, "4 attention heads but 8 KV"),
        ({"attention.head_count": 3, "attention.head_count_kv": 1}, "not divisible"),
        ({"block_count": 100_000}, "layers"),
        ({"block_count": 0}, "layers"),
        ({"embedding_length": 0}, "embedding length"),
        ({"context_length": 0}, "context length"),
        ({"context_length": "long"}, "context_length"),
        ({"attention.head_count": [4, 4, 4]}, "one count per layer"),
        ({"expert_count": 8}, "expert"),
        ({"expert_count": 8, "expert_used_count": 9}, "expert"),
    ],
)
def test_impossible_hparams(tmp_path: Path, kv: dict[str, Any], fragment: str) -> None:
    assert_model_error(write_gguf(tmp_path / "bad.gguf", kv=kv), fragment)


def test_big_endian_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "be.gguf", endianess=gguf.GGUFEndian.BIG)
    assert_model_error(path, "big-endian")


def test_unknown_tensor_type(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "t.gguf")
    data = bytearray(path.read_bytes())
    name = b"token_embd.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8  # after n_dims and two dims: the type
    data[at : at + 4] = (999).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert_model_error(path, "unknown tensor type")


# --- metadata quirks -------------------------------------------------------------------------


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "u.gguf", kv={"general.name": "XXXXmodel"})
    path.write_bytes(path.read_bytes().replace(b"XXXXmodel", b"\xff\xfe\xfdXmodel"))
    assert inspect_gguf(path).name == "\ufffd\ufffd\ufffdXmodel"


def test_huge_context_is_reported(tmp_path: Path) -> None:
    info = inspect_gguf(write_gguf(tmp_path / "c.gguf", kv={"context_length": 2**40}))
    assert info.n_ctx_train == 2**40


def test_defaults_without_optional_keys(tmp_path: Path) -> None:
    info = inspect_gguf(write_gguf(tmp_path / "d.gguf", kv={"attention.head_count_kv": None}))
    assert (info.n_head_kv, info.head_dim_k, info.head_dim_v) == (4, 64, 64)
    assert info.file_type == "F32"  # no general.file_type: the dominant tensor type
    assert info.n_vocab == 0 and info.tokenizer_model is None and info.add_bos is None
    assert info.n_params == 8 * 256 and info.tensor_bytes == 8 * 256 * 4
    assert not info.has_chat_template


def test_tokenizer_and_template(tmp_path: Path) -> None:
    kv = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(300)],
        "tokenizer.chat_template": "{{ messages }}",
        "tokenizer.ggml.add_bos_token": True,
        "general.file_type": 15,
    }
    info = inspect_gguf(write_gguf(tmp_path / "t.gguf", kv=kv))
    assert (info.n_vocab, info.tokenizer_model, info.add_bos) == (300, "gpt2", True)
    assert info.has_chat_template and info.chat_template == "{{ messages }}"
    assert info.file_type == "Q4_K_M"


@pytest.mark.parametrize(
    "arch, kv, n_swa, pattern",
    [
        ("gemma3", {}, 0, [False] * 4),  # gemma3 uses SWA only when the window key is there
        ("gemma3", {"attention.sliding_window": 512}, 512, [True, True, True, True]),
        (
            "gemma3",
            {"attention.sliding_window": 512, "attention.sliding_window_pattern": [True, False, True, False]},
            512,
            [True, False, True, False],
        ),  # an explicit per-layer array wins over the period
        ("gemma2", {}, 4096, [True, False, True, False]),  # always SWA, default window
        ("cohere2moe", {"attention.sliding_window": 128}, 128, [False, True, True, True]),
        ("llama4", {}, 8192, [True, True, True, False]),  # chunked attention by default
        ("llama4", {"attention.sliding_window": 0}, 0, [False] * 4),
        ("phi3", {"attention.sliding_window": 2048}, 0, [False] * 4),  # disabled in llama.cpp
        ("llama", {"attention.sliding_window": 2048}, 0, [False] * 4),  # arch has no SWA
    ],
)
def test_sliding_window_rules(
    tmp_path: Path, arch: str, kv: dict[str, Any], n_swa: int, pattern: list[bool]
) -> None:
    info = inspect_gguf(write_gguf(tmp_path / "s.gguf", arch=arch, kv=kv))
    assert (info.n_swa, list(info.swa_layers)) == (n_swa, pattern)


def test_required_swa_pattern_missing(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "g4.gguf", arch="gemma4", kv={"attention.sliding_window": 512})
    assert_model_error(path, "sliding_window_pattern")


def test_gemma4_shared_kv_layers(tmp_path: Path) -> None:
    kv = {
        "block_count": 6,
        "attention.sliding_window": 512,
        "attention.sliding_window_pattern": [True, True, True, False, True, False],
        "attention.key_length_swa": 32,
        "attention.value_length_swa": 32,
        "attention.shared_kv_layers": 2,
    }
    info = inspect_gguf(write_gguf(tmp_path / "g4.gguf", arch="gemma4", kv=kv))
    assert info.n_layer_kv_from_start == 4
    assert (info.head_dim_k_swa, info.head_dim_v_swa) == (32, 32)
    for shared in (5, 100):  # llama.cpp would abort at context creation
        bad = write_gguf(
            tmp_path / f"bad{shared}.gguf", arch="gemma4", kv={**kv, "attention.shared_kv_layers": shared}
        )
        assert_model_error(bad, "shares the KV cache")
    # layer 4 (SWA) would reuse layer 2, which is a full-attention layer
    mixed = write_gguf(
        tmp_path / "mixed.gguf",
        arch="gemma4",
        kv={**kv, "attention.sliding_window_pattern": [True, True, False, False, True, False]},
    )
    assert_model_error(mixed, "other attention kind")


def test_hybrid_lfm2(tmp_path: Path) -> None:
    kv = {"attention.head_count_kv": [0, 2, 0, 2], "shortconv.l_cache": 3, "attention.sliding_window": 1024}
    info = inspect_gguf(write_gguf(tmp_path / "lfm2.gguf", arch="lfm2", kv=kv))
    assert info.hybrid and not info.recurrent
    assert info.n_head_kv_per_layer == (0, 2, 0, 2) and info.n_head_kv == 2
    assert info.swa_layers == (False, True, False, True)  # every attention layer
    assert info.ssm == {"shortconv_l_cache": 3}


def test_pure_recurrent_mamba(tmp_path: Path) -> None:
    kv = {
        "attention.head_count": 0,
        "attention.head_count_kv": None,
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 512,
        "ssm.state_size": 16,
        "ssm.time_step_rank": 16,
    }
    info = inspect_gguf(write_gguf(tmp_path / "mamba.gguf", arch="mamba", kv=kv))
    assert info.recurrent and not info.hybrid
    assert (info.n_head, info.n_head_kv, info.head_dim_k) == (0, 0, 0)
    assert info.ssm == {"d_conv": 4, "d_inner": 512, "d_state": 16, "dt_rank": 16}


def test_mla_only_with_both_mla_keys(tmp_path: Path) -> None:
    kv = {
        "attention.head_count_kv": 1,
        "attention.key_length": 576,
        "attention.value_length": 512,
        "attention.kv_lora_rank": 512,
        "expert_count": 8,
        "expert_used_count": 2,
    }
    old = inspect_gguf(write_gguf(tmp_path / "old.gguf", arch="deepseek2", kv=kv))
    assert old.mla is None  # pre-MLA conversion: llama.cpp uses the full MHA cache
    assert (old.n_expert, old.n_expert_used) == (8, 2)
    kv.update({"attention.key_length_mla": 192, "attention.value_length_mla": 128})
    new = inspect_gguf(write_gguf(tmp_path / "new.gguf", arch="deepseek2", kv=kv))
    assert new.mla == {"key_length_mla": 192, "value_length_mla": 128, "kv_lora_rank": 512}
    assert (new.head_dim_k, new.head_dim_v, new.n_head_kv) == (576, 512, 1)


def test_per_layer_head_counts(tmp_path: Path) -> None:
    kv = {
        "attention.head_count": [4, 8, 4, 8],
        "attention.head_count_kv": [2, 2, 1, 0],
        "attention.key_length": 64,
        "attention.value_length": 64,
    }
    info = inspect_gguf(write_gguf(tmp_path / "deci.gguf", arch="deci", kv=kv))
    assert (info.n_head, info.n_head_kv) == (8, 2)
    assert info.n_head_per_layer == (4, 8, 4, 8)


def test_returns_frozen_info(smollm2_path: Path) -> None:
    info = inspect_gguf(smollm2_path)
    assert isinstance(info, GGUFInfo)
    with pytest.raises(AttributeError):
        info.n_layer = 1  # type: ignore[misc]


def test_copy_keeps_working(tmp_path: Path, smollm2_path: Path) -> None:
    """A renamed copy inspects the same: nothing depends on the original path or package."""
    copy = tmp_path / "renamed model.gguf"
    shutil.copyfile(smollm2_path, copy)
    info = inspect_gguf(copy)
    assert info.path == str(copy) and info.n_layer == 30
