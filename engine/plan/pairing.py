"""Can this draft model speculate for that target? llama.cpp's own rules, each in words.

The vocabulary rules are ``common_speculative_are_compatible`` (llama.cpp common/speculative.cpp):
same tokenizer type, same BOS/EOS handling, vocabulary sizes within 128, and identical token
texts from id 5 on. They are checked by llama.cpp's vocabulary itself (a vocab-only load in a
throwaway child: no weights, milliseconds), so what we say matches what llama.cpp would do.
The memory rule comes from fit: both models, with the target's context, in one budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128
SPEC_VOCAB_CHECK_START_TOKEN_ID = 5
_VOCAB_TYPES = {
    0: "none",
    1: "SentencePiece (SPM)",
    2: "byte-level BPE",
    3: "WordPiece",
    4: "Unigram",
    5: "RWKV",
    6: "PLaMo-2",
    7: "test",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VocabFacts:
    """What the rules need from one vocabulary (gathered in the child)."""

    vocab_type: int
    n_vocab: int
    add_bos: bool
    add_eos: bool
    bos: int
    eos: int
    texts: list[bytes]  # token texts from SPEC_VOCAB_CHECK_START_TOKEN_ID on


def vocab_checks(target: VocabFacts, draft: VocabFacts) -> list[Check]:
    checks = [
        Check(
            "vocabulary type",
            target.vocab_type == draft.vocab_type,
            f"both use {_VOCAB_TYPES.get(target.vocab_type, target.vocab_type)}"
            if target.vocab_type == draft.vocab_type
            else f"target uses {_VOCAB_TYPES.get(target.vocab_type, target.vocab_type)}, draft uses "
            f"{_VOCAB_TYPES.get(draft.vocab_type, draft.vocab_type)}",
        )
    ]
    for name, t_add, d_add, t_id, d_id in (
        ("BOS token", target.add_bos, draft.add_bos, target.bos, draft.bos),
        ("EOS token", target.add_eos, draft.add_eos, target.eos, draft.eos),
    ):
        if t_add != d_add:
            checks.append(
                Check(
                    name,
                    False,
                    f"the target {'adds' if t_add else 'does not add'} {name.split()[0]}, "
                    f"the draft {'does' if d_add else 'does not'}",
                )
            )
        elif t_add and t_id != d_id:
            checks.append(Check(name, False, f"{name} ids differ: target {t_id}, draft {d_id}"))
        else:
            checks.append(
                Check(name, True, f"same {name.split()[0]} handling" + (f" (id {t_id})" if t_add else ""))
            )
    diff = abs(target.n_vocab - draft.n_vocab)
    checks.append(
        Check(
            "vocabulary size",
            diff <= SPEC_VOCAB_MAX_SIZE_DIFFERENCE,
            f"target {target.n_vocab:,} tokens, draft {draft.n_vocab:,} (difference {diff}, "
            f"at most {SPEC_VOCAB_MAX_SIZE_DIFFERENCE} allowed)",
        )
    )
    mismatch = next((i for i, (a, b) in enumerate(zip(target.texts, draft.texts)) if a != b), None)
    if mismatch is None:
        checks.append(
            Check(
                "token texts",
                True,
                f"all {min(len(target.texts), len(draft.texts)):,} compared token texts agree",
            )
        )
    else:
        tid = mismatch + SPEC_VOCAB_CHECK_START_TOKEN_ID
        a = target.texts[mismatch].decode("utf-8", "replace")
        b = draft.texts[mismatch].decode("utf-8", "replace")
        checks.append(
            Check("token texts", False, f"token {tid} is {a!r} in the target but {b!r} in the draft")
        )
    return checks


def verdict(checks: list[Check]) -> dict[str, Any]:
    """``{"compatible": bool, "checks": [{"name", "ok", "detail"}]}`` (the CLI contract)."""
    return {"compatible": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
