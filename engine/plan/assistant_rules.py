"""Can this Gemma 4 assistant draft for that target? The rules, each in words, from the GGUF headers.

A ``gemma4-assistant`` model owns no KV cache: each of its layers is a *view* of one of the
target's K/V tensors (its SWA layer reads the target's layer n-2, its full layer n-1, llama.cpp
src/llama-model.cpp create_memory) and it reads the target's token embeddings. So a mismatch is
not a weaker draft but a wrong view: llama.cpp aborts the whole process in ggml_view_4d, or
drafts silently from the wrong numbers. Everything is therefore checked before anything loads:
architecture, hidden size (``embedding_length_out``), vocabulary, the SWA layout of the target's
last two layers and the head sizes of the shared layers. Used by the child before loading, by
``kvdeck pair`` and by the GUI's draft picker.
"""

from __future__ import annotations

from engine.gguf.inspect import GGUFInfo
from engine.gguf.reader import read_header
from engine.plan.pairing import Check

ASSISTANT_ARCH = "gemma4-assistant"
TARGET_ARCHS = ("gemma4",)


def embedding_length_out(path: str) -> int:
    """The assistant's ``embedding_length_out`` (the target hidden size it expects), 0 if absent."""
    import os

    meta, _types, _tensors = read_header(path, os.path.getsize(path))
    value = meta.get(f"{ASSISTANT_ARCH}.embedding_length_out", 0)
    return int(value) if isinstance(value, int) else 0


def _main(info: GGUFInfo) -> int:
    return info.n_layer - info.n_layer_nextn


def assistant_checks(target: GGUFInfo, assistant: GGUFInfo, embd_out: int) -> list[Check]:
    """Every rule with its verdict; ``embd_out`` is :func:`embedding_length_out` of the assistant."""
    checks = [
        Check(
            "architecture",
            target.architecture in TARGET_ARCHS,
            f"a {ASSISTANT_ARCH} drafts for Gemma 4 and the target is {target.architecture}"
            if target.architecture not in TARGET_ARCHS
            else "a Gemma 4 target for a Gemma 4 assistant",
        )
    ]
    checks.append(
        Check(
            "hidden size",
            embd_out == target.n_embd,
            f"the assistant expects a hidden size of {embd_out}, the target has {target.n_embd}"
            if embd_out != target.n_embd
            else f"both {target.n_embd}",
        )
    )
    same_vocab = target.n_vocab == assistant.n_vocab and target.tokenizer_model == assistant.tokenizer_model
    checks.append(
        Check(
            "vocabulary",
            same_vocab,
            f"target {target.n_vocab:,} tokens, assistant {assistant.n_vocab:,}"
            if not same_vocab
            else f"same {target.n_vocab:,}-token vocabulary",
        )
    )
    n = _main(target)
    swa = target.swa_layers[:n]
    layout_ok = n >= 2 and len(swa) >= 2 and swa[-2] and not swa[-1]
    checks.append(
        Check(
            "SWA layout",
            layout_ok,
            "the target's last two layers are sliding-window then full attention, as the assistant reads them"
            if layout_ok
            else "the assistant reads the target's layer n-2 as sliding-window and n-1 as "
            "full attention, but this target's last two layers are not laid out that way",
        )
    )
    a_swa = assistant.swa_layers[: assistant.n_layer]
    t_full, t_swa = target.head_dim_k, target.head_dim_k_swa or target.head_dim_k
    a_full, a_swa_dim = assistant.head_dim_k, assistant.head_dim_k_swa or assistant.head_dim_k
    heads_ok = (
        a_full == t_full
        and (a_swa_dim == t_swa or not any(a_swa))
        and assistant.n_head_kv == target.n_head_kv
    )
    checks.append(
        Check(
            "head sizes",
            heads_ok,
            f"shared layers: assistant heads {a_swa_dim}/{a_full} (SWA/full) with {assistant.n_head_kv} KV heads, "
            f"target {t_swa}/{t_full} with {target.n_head_kv}"
            if not heads_ok
            else f"the shared layers agree ({t_swa}/{t_full}, {target.n_head_kv} KV heads)",
        )
    )
    return checks


def refusal(target_name: str, assistant_name: str, checks: list[Check]) -> str:
    """One sentence for a pair that fails any rule, or ''."""
    bad = [c for c in checks if not c.ok]
    if not bad:
        return ""
    return (
        f"{assistant_name} cannot draft for {target_name}: "
        + "; ".join(f"{c.name}: {c.detail}" for c in bad)
        + "; chat works without drafting"
    )


def outgrows(target: dict[str, int], drafter: dict[str, int]) -> str:
    """The sentence refusing a drafting context that would not follow the target's size (context,
    sequences, batch), or ''. A larger context than the target's KV makes the shared views run
    past the target's buffers; another stream count aborts in ggml_view_4d."""
    bad = [k for k in target if drafter.get(k, target[k]) != target[k]]
    if not bad:
        return ""
    return (
        "the drafting context would not follow the target's size ("
        + ", ".join(f"{k} {drafter[k]:,} against the target's {target[k]:,}" for k in bad)
        + "); drafting is off"
    )
