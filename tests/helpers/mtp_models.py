"""Tiny random-weight GGUFs for self-drafting: MTP heads (hy_v3 chained, qwen35 single) and a
Gemma 4 target + ``gemma4-assistant`` pair.

Adapted from the research scripts (/work/research/mtp/write_models.py): the tensor and key lists
come from llama.cpp's src/models/{qwen35,hy-v3,gemma4,gemma4-assistant}.cpp. The difference is
the vocabulary: these carry the factory's small SentencePiece vocab (320 tokens) so that the
runtime can tokenise text prompts. Random weights: greedy identity is meaningful, acceptance is
not (a random head guesses at chance). Shapes are in ggml order (ne0, ne1, ...).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.helpers.gguf_factory import add_tokenizer

N_VOCAB = 320  # add_tokenizer's size


class _Writer:
    """A GGUFWriter plus a seeded generator for the tensors."""

    def __init__(
        self, path: Path, arch: str, seed: int, dtype: type = np.float32, qtype: str | None = None
    ) -> None:
        self.w = gguf.GGUFWriter(str(path), arch)
        self.rng = np.random.default_rng(seed)
        self.arch, self.path, self.dtype = arch, path, dtype
        self.qtype = gguf.GGMLQuantizationType[qtype] if qtype else None  # matrices with 32-wide rows

    def t(self, name: str, ne: tuple[int, ...], kind: str = "rand", scale: float = 0.08) -> None:
        shape = tuple(reversed([int(x) for x in ne]))
        if kind == "ones":
            a = np.ones(shape, dtype=np.float32)
        elif kind == "neg":
            a = -np.abs(self.rng.standard_normal(shape)).astype(np.float32)
        else:
            a = (self.rng.standard_normal(shape) * scale).astype(np.float32)
            if len(ne) >= 2 and self.dtype is not np.float32:
                a = a.astype(self.dtype)
        if self.qtype is not None and kind == "rand" and len(ne) >= 2 and ne[0] % 32 == 0:
            self.w.add_tensor(name, gguf.quants.quantize(a, self.qtype), raw_dtype=self.qtype)
            return
        self.w.add_tensor(name, a)

    def common(
        self,
        n_ctx_train: int,
        n_embd: int,
        n_layer_all: int,
        n_ff: int,
        n_head: int,
        n_head_kv: int,
        head_k: int,
        head_v: int,
        n_nextn: int,
    ) -> None:
        w, a = self.w, self.arch
        w.add_string("general.name", f"tiny-{a}")
        w.add_uint32(f"{a}.context_length", n_ctx_train)
        w.add_uint32(f"{a}.embedding_length", n_embd)
        w.add_uint32(f"{a}.block_count", n_layer_all)
        w.add_uint32(f"{a}.feed_forward_length", n_ff)
        w.add_uint32(f"{a}.attention.head_count", n_head)
        w.add_uint32(f"{a}.attention.head_count_kv", n_head_kv)
        w.add_uint32(f"{a}.attention.key_length", head_k)
        w.add_uint32(f"{a}.attention.value_length", head_v)
        w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
        w.add_float32(f"{a}.rope.freq_base", 10000.0)
        if n_nextn:
            w.add_uint32(f"{a}.nextn_predict_layers", n_nextn)
        add_tokenizer(w)

    def attention(self, i: int, e: int, d: int, h: int, hkv: int, q_gate: bool = False) -> None:
        """Q/K/V/output with Q and K norms (``q_gate``: Q carries its output gate, twice as wide)."""
        self.t(f"blk.{i}.attn_q.weight", (e, d * h * (2 if q_gate else 1)))
        self.t(f"blk.{i}.attn_k.weight", (e, d * hkv))
        self.t(f"blk.{i}.attn_v.weight", (e, d * hkv))
        self.t(f"blk.{i}.attn_output.weight", (d * h, e))
        self.t(f"blk.{i}.attn_q_norm.weight", (d,), "ones")
        self.t(f"blk.{i}.attn_k_norm.weight", (d,), "ones")

    def ffn(self, i: int, e: int, ff: int) -> None:
        self.t(f"blk.{i}.ffn_gate.weight", (e, ff))
        self.t(f"blk.{i}.ffn_up.weight", (e, ff))
        self.t(f"blk.{i}.ffn_down.weight", (ff, e))

    def nextn(self, i: int, e: int) -> None:
        self.t(f"blk.{i}.nextn.eh_proj.weight", (2 * e, e))
        self.t(f"blk.{i}.nextn.enorm.weight", (e,), "ones")
        self.t(f"blk.{i}.nextn.hnorm.weight", (e,), "ones")
        self.t(f"blk.{i}.nextn.shared_head_norm.weight", (e,), "ones")

    def finish(self) -> Path:
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()
        return self.path


def write_hyv3(
    path: str | Path,
    n_nextn: int = 3,
    n_trunk: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_ff: int = 128,
    seed: int = 0,
) -> Path:
    """hy_v3 with a dense FFN (its MoE tensors are optional) and ``n_nextn`` chained MTP heads;
    ``n_nextn=0`` writes the same model without heads (for the refusal)."""
    w = _Writer(Path(path), "hy_v3", seed)
    E, H, HKV, D, FF = n_embd, n_head, n_head_kv, head_dim, n_ff
    w.common(4096, E, n_trunk + n_nextn, FF, H, HKV, D, D, n_nextn)
    w.w.add_uint32("hy_v3.rope.dimension_count", D)
    w.w.add_uint32("hy_v3.expert_feed_forward_length", 0)  # required key, unused when dense
    w.t("token_embd.weight", (E, N_VOCAB), scale=1.0)
    w.t("output_norm.weight", (E,), "ones")
    w.t("output.weight", (E, N_VOCAB), scale=0.5)
    for i in range(n_trunk + n_nextn):
        w.t(f"blk.{i}.attn_norm.weight", (E,), "ones")
        w.attention(i, E, D, H, HKV)
        w.t(f"blk.{i}.ffn_norm.weight", (E,), "ones")
        w.ffn(i, E, FF)
        if i >= n_trunk:
            w.nextn(i, E)
    return w.finish()


def write_qwen35(path: str | Path, seed: int = 1, qtype: str | None = None) -> Path:
    """Qwen3.5 dense: layer 0 gated delta-net (recurrent), layer 1 attention, layer 2 the MTP head.
    A hybrid target: rolling back a rejected draft needs ``n_rs_seq`` snapshots. ``qtype``
    (e.g. "Q4_0") quantizes the matrices whose rows are a multiple of 32 wide."""
    a = "qwen35"
    E, H, HKV, D, FF, n_trunk, n_nextn = 64, 4, 2, 16, 128, 2, 1
    w = _Writer(Path(path), a, seed, qtype=qtype)
    w.common(4096, E, n_trunk + n_nextn, FF, H, HKV, D, D, n_nextn)
    w.w.add_uint32(f"{a}.rope.dimension_count", D)
    w.w.add_array(f"{a}.rope.dimension_sections", [3, 3, 2, 0])
    w.w.add_uint32(f"{a}.full_attention_interval", 2)
    d_state, n_group, dt_rank, d_conv = 16, 2, 4, 4
    for k, v in (
        ("conv_kernel", d_conv),
        ("state_size", d_state),
        ("group_count", n_group),
        ("time_step_rank", dt_rank),
        ("inner_size", d_state * dt_rank),
    ):
        w.w.add_uint32(f"{a}.ssm.{k}", v)
    key_dim, value_dim = d_state * n_group, d_state * dt_rank
    w.t("token_embd.weight", (E, N_VOCAB), scale=1.0)
    w.t("output_norm.weight", (E,), "ones")
    w.t("output.weight", (E, N_VOCAB), scale=0.5)
    for i in range(n_trunk + n_nextn):
        w.t(f"blk.{i}.attn_norm.weight", (E,), "ones")
        w.t(f"blk.{i}.post_attention_norm.weight", (E,), "ones")
        if i < n_trunk and (i + 1) % 2 != 0:
            w.t(f"blk.{i}.attn_qkv.weight", (E, key_dim * 2 + value_dim))
            w.t(f"blk.{i}.attn_gate.weight", (E, value_dim))
            w.t(f"blk.{i}.ssm_conv1d.weight", (d_conv, key_dim * 2 + value_dim))
            w.t(f"blk.{i}.ssm_dt.bias", (dt_rank,))
            w.t(f"blk.{i}.ssm_a", (dt_rank,), "neg")
            w.t(f"blk.{i}.ssm_beta.weight", (E, dt_rank))
            w.t(f"blk.{i}.ssm_alpha.weight", (E, dt_rank))
            w.t(f"blk.{i}.ssm_norm.weight", (d_state,), "ones")
            w.t(f"blk.{i}.ssm_out.weight", (value_dim, E))
        else:
            w.attention(i, E, D, H, HKV, q_gate=True)
        w.ffn(i, E, FF)
        if i >= n_trunk:
            w.nextn(i, E)
    return w.finish()


G_E, G_H, G_HKV, G_DF, G_DS, G_FF, G_SWA = 64, 4, 2, 32, 16, 128, 64


def _gemma4_swa(w: _Writer, a: str, pattern: list[bool]) -> None:
    """The sliding-window keys the target and the assistant both carry."""
    w.w.add_array(f"{a}.attention.sliding_window_pattern", pattern)
    w.w.add_uint32(f"{a}.attention.sliding_window", G_SWA)
    w.w.add_uint32(f"{a}.attention.key_length_swa", G_DS)
    w.w.add_uint32(f"{a}.attention.value_length_swa", G_DS)
    w.w.add_float32(f"{a}.rope.freq_base_swa", 10000.0)
    w.w.add_uint32(f"{a}.rope.dimension_count_swa", G_DS)


def _gemma4_block(w: _Writer, i: int, E: int, D: int, FF: int, own_kv: bool) -> None:
    """One Gemma 4 block; the assistant's blocks (``own_kv`` False) read the target's K/V."""
    w.t(f"blk.{i}.attn_norm.weight", (E,), "ones")
    w.t(f"blk.{i}.attn_q.weight", (E, D * G_H))
    if own_kv:
        w.t(f"blk.{i}.attn_k.weight", (E, D * G_HKV))
        w.t(f"blk.{i}.attn_v.weight", (E, D * G_HKV))
    w.t(f"blk.{i}.attn_output.weight", (D * G_H, E))
    w.t(f"blk.{i}.attn_q_norm.weight", (D,), "ones")
    if own_kv:
        w.t(f"blk.{i}.attn_k_norm.weight", (D,), "ones")
    w.t(f"blk.{i}.post_attention_norm.weight", (E,), "ones")
    w.t(f"blk.{i}.layer_output_scale.weight", (1,), "ones")
    w.t(f"blk.{i}.ffn_norm.weight", (E,), "ones")
    w.ffn(i, E, FF)
    w.t(f"blk.{i}.post_ffw_norm.weight", (E,), "ones")


def write_gemma4_target(path: str | Path, n_embd: int = G_E, n_ctx_train: int = 8192, seed: int = 2) -> Path:
    """Gemma 4: layers (swa, swa, swa, full); the assistant reads layers n-2 (SWA) and n-1 (full)."""
    a = "gemma4"
    pattern = [True, True, True, False]
    w = _Writer(Path(path), a, seed)
    w.common(n_ctx_train, n_embd, len(pattern), G_FF, G_H, G_HKV, G_DF, G_DF, 0)
    _gemma4_swa(w, a, pattern)
    w.w.add_uint32(f"{a}.embedding_length_per_layer_input", 0)
    w.w.add_uint32(f"{a}.attention.shared_kv_layers", 0)
    w.t("token_embd.weight", (n_embd, N_VOCAB), scale=1.0)
    w.t("output_norm.weight", (n_embd,), "ones")
    w.t("rope_freqs.weight", (G_DF // 2,), "ones")
    for i, swa in enumerate(pattern):
        _gemma4_block(w, i, n_embd, G_DS if swa else G_DF, G_FF, own_kv=True)
    return w.finish()


def write_gemma4_assistant(
    path: str | Path, n_ctx_train: int = 131072, embd_out: int = G_E, head_full: int = G_DF, seed: int = 3
) -> Path:
    """The assistant: every block is a nextn block sharing the target's K/V; its own default
    context (``n_ctx_train``) is deliberately larger than any fitted target's (the seed
    scenario). ``embd_out``/``head_full`` other than the target's make a bad pair."""
    a = "gemma4-assistant"
    E_A, FF_A = 32, 64
    pattern = [True, False]
    w = _Writer(Path(path), a, seed)
    w.common(n_ctx_train, E_A, len(pattern), FF_A, G_H, G_HKV, head_full, head_full, len(pattern))
    w.w.add_uint32(f"{a}.embedding_length_out", embd_out)
    _gemma4_swa(w, a, pattern)
    w.t("token_embd.weight", (E_A, N_VOCAB), scale=1.0)
    w.t("output_norm.weight", (E_A,), "ones")
    w.t("nextn.pre_projection.weight", (2 * embd_out, E_A))
    w.t("nextn.post_projection.weight", (E_A, embd_out))
    w.t("rope_freqs.weight", (head_full // 2,), "ones")
    for i, swa in enumerate(pattern):
        _gemma4_block(w, i, E_A, G_DS if swa else head_full, FF_A, own_kv=False)
    return w.finish()


def write_set(folder: Path) -> dict[str, str]:
    """Every model above in ``folder``, by the name the tests use: MTP targets (``hyv3``,
    ``qwen35``), the same hy_v3 without heads (``plain``), and a Gemma 4 target (``g4``) with
    its assistant (``g4a``) and one whose full-attention head size is not the target's
    (``g4a_heads``, a bad pair)."""
    return {
        "hyv3": str(write_hyv3(folder / "hyv3.gguf")),
        "qwen35": str(write_qwen35(folder / "qwen35.gguf")),
        "plain": str(write_hyv3(folder / "plain.gguf", n_nextn=0)),
        "g4": str(write_gemma4_target(folder / "g4.gguf")),
        "g4a": str(write_gemma4_assistant(folder / "g4a.gguf")),
        "g4a_heads": str(write_gemma4_assistant(folder / "g4a-heads.gguf", head_full=64)),
    }
