"""CPU_REPACK: which weights llama.cpp repacks for which CPU features, and what the plan shows.

The real-load comparison is benchmarks/cpu_repack.py (it needs a CPU with the features in
question); here the rules of engine.plan.cpu_repack are checked on a synthetic file, feature set by
feature set, plus the detection of engine.plan.cpu_features.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from engine.core.memory_types import MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan import cpu_features, cpu_repack
from engine.plan.analytic import analytic_plan
from engine.plan.cpu_features import CpuFeatures
from engine.plan.cpu_repack import layout, repack_plan, tensor_layout
from tests.helpers.gguf_factory import add_tokenizer
from tests.helpers.llama_dry_run import dry_run
from tests.helpers.mtp_models import write_qwen35

AVX2 = CpuFeatures.of("AVX2")
AVX512 = CpuFeatures.of("AVX2", "AVX512")
DOTPROD = CpuFeatures.of("NEON", "DOTPROD")
I8MM = CpuFeatures.of("NEON", "DOTPROD", "MATMUL_INT8")
SVE256 = CpuFeatures.of("NEON", "DOTPROD", "MATMUL_INT8", "SVE", sve_bytes=32)
NONE = CpuFeatures.of()
#: These tests specify the buffers of a load that copies the weights in: with mmap the plain CPU
#: buffer is the file's span instead (tests/test_mapped_weights.py).
NO_MMAP = PlanSettings(n_ctx=256, load_mode="none")
E, FF, V = 256, 512, 324  # 324 rows: a multiple of 4, not of 8


def test_layout_follows_ggml_repack_get_optimal_repack_type() -> None:
    assert layout("Q4_0", 512, AVX2) == "8x8" and layout("Q4_0", 516, AVX2) is None
    assert layout("Q4_0", 516, DOTPROD) == "4x4" and layout("Q4_0", 516, I8MM) == "4x8"
    assert layout("Q4_0", 512, SVE256) == "8x8"
    assert layout("Q4_0", 512, CpuFeatures.of("SVE", "MATMUL_INT8", sve_bytes=16)) is None
    assert layout("Q4_K", 512, AVX2) == "8x8" and layout("Q4_K", 512, DOTPROD) == "8x4"
    assert layout("Q4_K", 516, I8MM) is None  # K-quants need 8 rows on every CPU
    assert layout("Q2_K", 512, AVX2) is None and layout("Q2_K", 512, AVX512) == "8x8"
    for t in ("Q5_K", "Q6_K", "Q8_0", "Q1_0"):  # ARM only
        assert layout(t, 512, AVX512) is None and layout(t, 512, DOTPROD) is not None
    assert layout("IQ4_NL", 512, AVX2) == layout("MXFP4", 512, AVX2) == "8x8"
    assert layout("MXFP4", 516, DOTPROD) == "4x4"
    assert layout("Q4_1", 512, I8MM) is None and layout("F16", 512, AVX512) is None


def test_only_2d_mul_mat_and_3d_mul_mat_id_weights_qualify() -> None:
    assert tensor_layout("blk.3.attn_q.weight", "Q4_0", (E, E), AVX2) == "8x8"
    assert tensor_layout("output.weight", "Q4_0", (E, 1024), AVX2) == "8x8"
    assert tensor_layout("token_embd.weight", "Q4_0", (E, 1024), AVX2) is None  # GET_ROWS
    assert tensor_layout("blk.0.attn_q.bias", "Q4_0", (E, E), AVX2) is None  # ADD
    assert tensor_layout("blk.0.ffn_gate_exps.weight", "Q4_0", (E, FF, 8), AVX2) == "8x8"
    assert tensor_layout("blk.0.ffn_gate_exps.weight", "Q4_0", (E, FF, 1), AVX2) is None
    assert tensor_layout("blk.0.attn_k_b.weight", "Q4_0", (E, FF, 8), AVX2) is None  # 3-D
    assert tensor_layout("blk.0.attn_q.weight", "Q4_0", (E, 1), AVX2) is None  # 1 row: 1-D


def _write(path: Path, tied: bool) -> Path:
    """A 2-layer llama: Q4_0 attention, Q6_K gate/up, Q2_K down, Q4_0 token_embd of 324 rows,
    tied or with a Q2_K output. Random bytes: only sizes matter."""
    rng = np.random.default_rng(0)
    T = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), "llama")
    for key, val in (
        ("context_length", 256),
        ("embedding_length", E),
        ("block_count", 2),
        ("feed_forward_length", FF),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
    ):
        w.add_uint32(f"llama.{key}", val)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    add_tokenizer(w, n_words=V - 259)

    def mat(name: str, qtype: str, ne0: int, ne1: int) -> None:
        block, size = gguf.GGML_QUANT_SIZES[T[qtype]]
        data = rng.integers(0, 256, size=(ne1, ne0 // block * size), dtype=np.uint8)
        w.add_tensor(name, data, raw_dtype=T[qtype])

    mat("token_embd.weight", "Q4_0", E, V)
    for il in range(2):
        w.add_tensor(f"blk.{il}.attn_norm.weight", np.ones(E, dtype=np.float32))
        for name, ne1 in (("attn_q", E), ("attn_k", 128), ("attn_v", 128), ("attn_output", E)):
            mat(f"blk.{il}.{name}.weight", "Q4_0", E, ne1)
        mat(f"blk.{il}.ffn_gate.weight", "Q6_K", E, FF)
        mat(f"blk.{il}.ffn_up.weight", "Q6_K", E, FF)
        mat(f"blk.{il}.ffn_down.weight", "Q2_K", FF, E)
        w.add_tensor(f"blk.{il}.ffn_norm.weight", np.ones(E, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(E, dtype=np.float32))
    if not tied:
        mat("output.weight", "Q2_K", E, V)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _nbytes(qtype: str, ne0: int, ne1: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return -(-(ne0 * ne1 // block * size) // 32) * 32


ATTN = 2 * (2 * _nbytes("Q4_0", E, E) + 2 * _nbytes("Q4_0", E, 128))
FFN = 2 * 2 * _nbytes("Q6_K", E, FF)  # gate, up
DOWN = 2 * _nbytes("Q2_K", FF, E)
EMBD = _nbytes("Q4_0", E, V)


@pytest.mark.parametrize(
    "features, tied, expected",
    [
        (NONE, True, 0),
        (AVX2, True, ATTN),  # 324 rows: the tied output's token_embd copy is not repacked
        (AVX512, False, ATTN + DOWN),  # Q2_K needs AVX512; the output's 324 rows are not 8k
        (AVX2, False, ATTN),
        (DOTPROD, True, ATTN + FFN + EMBD),  # ARM: Q6_K too, and the tied copy (324 % 4 == 0)
        (I8MM, False, ATTN + FFN),
    ],
)
def test_repacked_bytes_per_feature_set(
    tmp_path: Path, features: CpuFeatures, tied: bool, expected: int
) -> None:
    info = inspect_gguf(_write(tmp_path / "m.gguf", tied))
    plan = repack_plan(info, features)
    assert plan.bytes == expected
    assert plan.moved == expected - (EMBD if tied and features is DOTPROD else 0)


def test_plan_splits_cpu_weights_and_adds_the_tied_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = inspect_gguf(_write(tmp_path / "m.gguf", tied=True))
    monkeypatch.setenv("KVDECK_CPU_FEATURES", "unknown")
    before = analytic_plan(info, NO_MMAP, [])
    (only,) = [a for a in before.allocations if a.component == "weights"]
    assert any("not counted here" in n and "Q4_0/Q6_K" in n for n in before.notes)

    monkeypatch.setenv("KVDECK_CPU_FEATURES", "NEON,DOTPROD")
    after = analytic_plan(info, NO_MMAP, [])
    cpu, rep = [a for a in after.allocations if a.component == "weights"]
    assert rep.bytes == ATTN + FFN + EMBD and rep.detail.startswith("CPU_REPACK: 13 matrices")
    assert cpu.bytes == only.bytes - ATTN - FFN  # the tied copy is extra, the rest moves
    assert not any("not counted" in n for n in after.notes)
    assert any("move to CPU_REPACK" in n for n in after.notes)

    monkeypatch.setenv("KVDECK_CPU_FEATURES", "none")
    plain = analytic_plan(info, NO_MMAP, [])
    assert [a.bytes for a in plain.allocations if a.component == "weights"] == [only.bytes]
    assert not any("REPACK" in n for n in plain.notes)


def test_a_real_load_repacks_what_the_detected_features_predict(tmp_path: Path) -> None:
    """On this machine's build (whatever its features): CPU and CPU_REPACK model buffers of a
    real load without mmap equal the plan's two CPU weight allocations, as printed."""
    paths = [_write(tmp_path / f"{k}.gguf", tied=k == "tied") for k in ("tied", "untied")]
    runs = dry_run([(str(p), NO_MMAP) for p in paths], real=True, timeout=300)
    for path, run in zip(paths, runs):
        assert run.ok, [x for x in run.lines if "error" in x]
        logged = {b: v for (c, b), v in run.parser.buffers.items() if c == "weights"}
        plan = analytic_plan(inspect_gguf(path), NO_MMAP, [])
        repack, _note = cpu_repack.cpu_only_repack(inspect_gguf(path))
        rep = repack.bytes if repack else 0
        assert f"{rep / MiB:.2f}" == f"{logged.get('CPU_REPACK', 0.0):.2f}", path.name
        cpu = plan.bytes_for("CPU", "weights") - rep
        assert f"{cpu / MiB:.2f}" == f"{logged['CPU']:.2f}", path.name


def test_amx_builds_are_not_modelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = inspect_gguf(_write(tmp_path / "m.gguf", tied=False))
    monkeypatch.setenv("KVDECK_CPU_FEATURES", "AVX2,AVX512,AVX512_VNNI,AMX_INT8")
    plan = analytic_plan(info, NO_MMAP, [])
    assert len([a for a in plan.allocations if a.component == "weights"]) == 1
    assert any("AMX buffer type" in n for n in plan.notes)


# --- feature detection ---------------------------------------------------------------------


def test_cpuinfo_and_system_info_parsing() -> None:
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni\n"
    assert cpu_features.parse_cpuinfo(x86).flags == {"AVX2", "AVX512", "AVX512_VNNI"}
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve sve2\nCPU part\t: 0xd40\n"
    got = cpu_features.parse_cpuinfo(arm, sve_bytes=32)
    assert got.flags == {"NEON", "DOTPROD", "MATMUL_INT8", "SVE"} and got.sve_bytes == 32
    assert cpu_features.parse_cpuinfo("processor : 0\n") is None
    mac = "hw.optional.neon: 1\nhw.optional.arm.FEAT_DotProd: 1\nhw.optional.arm.FEAT_I8MM: 0\n"
    assert cpu_features.parse_sysctl(mac).flags == {"NEON", "DOTPROD"}
    info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | SVE_CNT = 16 | REPACK = 1 | \n"
    si = cpu_features.parse_system_info(info)
    assert si is not None and si.flags == {"AVX2", "AVX512"} and si.sve_bytes == 16


def test_constant_functions_are_decoded() -> None:
    dec = cpu_features._returned_constant
    assert dec(62, b"\xf3\x0f\x1e\xfa\xb8\x01\x00\x00\x00\xc3") == 1
    assert dec(62, b"\xf3\x0f\x1e\xfa\x31\xc0\xc3") == 0
    assert dec(62, b"\x55\x48\x89\xe5") is None  # not a constant function: unknown
    arm = lambda *w: struct.pack(f"<{len(w)}I", *w)  # noqa: E731
    assert dec(183, arm(0xD503245F, 0x52800020, 0xD65F03C0)) == 1  # bti c; mov w0, #1; ret
    assert dec(183, arm(0x52800000, 0xD65F03C0)) == 0
    assert dec(183, arm(0x2A1F03E0, 0xD65F03C0)) == 0


def test_installed_library_agrees_with_llama_print_system_info() -> None:
    """The parent reads libggml-cpu as a file; a child that loads it must report the same."""
    from engine.core.build import runtime_lib_dir

    built = cpu_features.build_features(runtime_lib_dir())
    if built is None:
        pytest.skip("no single ELF libggml-cpu in the installed runtime")
    text = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    reported = cpu_features.parse_system_info(text)
    assert reported is not None and built.flags == reported.flags


def test_detect_prefers_the_build_over_the_processor() -> None:
    build = CpuFeatures.of("AVX2", source="lib")
    host = CpuFeatures.of("AVX2", "AVX512", source="/proc/cpuinfo")
    assert cpu_features.combine(build, host).flags == {"AVX2"}  # a Xeon, a non-AVX512 build
    assert cpu_features.combine(None, host).flags == host.flags
    assert cpu_features.combine(None, None) is None
    sve = cpu_features.combine(CpuFeatures.of("NEON", "SVE"), CpuFeatures.of("SVE", sve_bytes=32))
    assert sve is not None and sve.sve_bytes == 32


def test_repack_rules_cover_the_repackable_types() -> None:
    assert set(cpu_repack.RULES) == set(cpu_repack.REPACKABLE)


def test_mtp_blocks_are_not_repacked_without_load_mtp(tmp_path: Path) -> None:
    """A quantized qwen35 with an MTP block, loaded CPU-only: llama.cpp skips the block's
    matrices without load_mtp (engine.plan.drafting plans them), so CPU_REPACK holds only the
    trunk's and the plain CPU buffer is what is left, as a real load prints (the plan used to
    move the block's matrices too: a negative CPU weights figure)."""
    path = write_qwen35(tmp_path / "qwen35-q4_0.gguf", qtype="Q4_0")
    (run,) = dry_run([(str(path), NO_MMAP)], real=True, timeout=300)
    assert run.ok, [x for x in run.lines if "error" in x]
    logged = {b: v for (c, b), v in run.parser.buffers.items() if c == "weights"}
    plan = analytic_plan(inspect_gguf(path), NO_MMAP, [])
    weights = [a.bytes for a in plan.allocations if a.component == "weights"]
    assert all(b >= 0 for b in weights)
    repack, _note = cpu_repack.cpu_only_repack(inspect_gguf(path))
    rep = repack.bytes if repack else 0
    assert f"{rep / MiB:.2f}" == f"{logged.get('CPU_REPACK', 0.0):.2f}"
    assert f"{(plan.bytes_for('CPU', 'weights') - rep) / MiB:.2f}" == f"{logged['CPU']:.2f}"
