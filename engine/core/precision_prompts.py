"""Prompts for the KV precision check: a small built-in set, and the user's own from a file.

Quantized caches hurt some text more than other: exact tokens (code, numbers) leave no room for
a slightly wrong attention score, and a language the model saw less of has flatter, more fragile
distributions. So the built-in set mixes code, arithmetic, English prose and other languages;
each prompt is a plain completion (no chat template), so base and instruct models both continue
it, and 20-60 tokens long, so the whole check takes about a minute on a laptop CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.core.errors import KvDeckError

#: Name and text of each built-in prompt.
BUILTIN_PROMPTS: tuple[tuple[str, str], ...] = (
    (
        "code",
        "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n"
        '    """Merge two sorted lists into one sorted list in linear time."""\n'
        "    result = []\n    i = j = 0\n",
    ),
    (
        "math",
        "Question: A train leaves at 9:40 and arrives at 13:15. The ticket costs 42 euros "
        "and a child pays half. How long is the trip, and what do two adults and one child "
        "pay?\nAnswer: The trip takes",
    ),
    (
        "prose",
        "The lighthouse keeper had not seen a ship in eleven days. Each evening he climbed "
        "the iron stairs, wiped the salt from the great lens and lit the lamp anyway, "
        "because",
    ),
    (
        "german",
        "Die Stadtbibliothek bleibt wegen Renovierungsarbeiten bis Ende März geschlossen. "
        "Bereits ausgeliehene Bücher können in dieser Zeit",
    ),
    (
        "french",
        "Pour préparer une vraie ratatouille, il faut d'abord couper les aubergines, les "
        "courgettes et les poivrons en dés, puis",
    ),
)

MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 8000


def builtin_prompts() -> list[str]:
    """The texts of the built-in prompts, in a fixed order (results are listed per prompt)."""
    return [text for _name, text in BUILTIN_PROMPTS]


def builtin_names() -> list[str]:
    return [name for name, _text in BUILTIN_PROMPTS]


def parse_prompts(text: str) -> list[str]:
    """Prompts from text: one per paragraph, paragraphs separated by blank lines.

    A paragraph keeps its inner line breaks (code prompts need them); surrounding blank lines
    and trailing spaces do not count.
    """
    blocks = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
    return [b.strip("\n").rstrip() for b in blocks if b.strip()]


def check_prompts(prompts: list[str]) -> list[str]:
    """The prompts unchanged, or a KvDeckError that says what is wrong with them."""
    if not prompts:
        raise KvDeckError("there are no prompts to check (give at least one paragraph of text)")
    if len(prompts) > MAX_PROMPTS:
        raise KvDeckError(f"{len(prompts)} prompts is too many for a quick check (at most {MAX_PROMPTS})")
    for i, p in enumerate(prompts, 1):
        if len(p) > MAX_PROMPT_CHARS:
            raise KvDeckError(f"prompt {i} is {len(p)} characters long (at most {MAX_PROMPT_CHARS})")
    return prompts


def load_prompts(path: str | Path) -> list[str]:
    """Read a prompts file (UTF-8, one prompt per blank-line-separated paragraph)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KvDeckError(f"no such prompts file: {p}") from None
    except UnicodeDecodeError:
        raise KvDeckError(f"the prompts file is not UTF-8 text: {p}") from None
    except OSError as exc:
        raise KvDeckError(f"cannot read the prompts file {p}: {exc.strerror or exc}") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise KvDeckError(f"the prompts file has no text: {p}")
    return check_prompts(prompts)
