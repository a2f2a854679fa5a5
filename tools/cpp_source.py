"""Reading llama.cpp's C++ source with regular expressions: comments out, matching braces,
argument lists and function bodies (for tools/gen_arch_table.py, which derives its tables from
the vendored source rather than keeping them by hand)."""

from __future__ import annotations

import re
from collections.abc import Iterator


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def block(text: str, open_at: int) -> int:
    """Index just past the brace/paren matching the one at `open_at`."""
    pair = {"{": "}", "(": ")"}[text[open_at]]
    depth, i = 0, open_at
    while True:
        c = text[i]
        depth += c == text[open_at]
        depth -= c == pair
        i += 1
        if depth == 0:
            return i


def split_args(text: str) -> list[str]:
    args, depth, cur = [], 0, ""
    for c in text:
        if c in "([{<" and not (c == "<" and not cur.strip()):
            depth += c in "([{"
        if c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += c
    return args + [cur.strip()] if cur.strip() else args


def functions(text: str, name_re: str) -> Iterator[tuple[str, str]]:
    """(name, body) of every function definition whose name matches `name_re`."""
    for m in re.finditer(r"\b(" + name_re + r")\s*\(([^;{}]*)\)\s*(?:const\s*)?\{", text):
        start = m.end() - 1
        yield m.group(1), text[start + 1 : block(text, start) - 1]
