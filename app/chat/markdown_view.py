"""Markdown -> Qt rich-text HTML for chat bubbles (no Qt import here).

Model output is untrusted text, so the renderer is deliberately conservative:
raw HTML is never interpreted, images are never fetched and only
http/https/mailto links survive. The output targets ``QTextDocument``'s
HTML 4 / CSS 2.1 subset: styles are inline (Qt has no class-based sheets for
this), tables carry ``border``/``cellspacing``/``cellpadding`` attributes
(Qt ignores most table CSS) and code is a ``<pre>`` with a background colour.

Keeping this module free of Qt makes it a pure function: fast to unit-test and
cheap enough to call on every streaming tick (~50 ms) with the growing text.
"""

from __future__ import annotations

import html
import re
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import unescapeAll
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.styles import get_style_by_name
from pygments.token import Token as PygToken
from pygments.util import ClassNotFound

from app.theme import MARKDOWN

__all__ = ["escape_plain", "render_markdown"]

# Only these schemes get a clickable <a href>; the widget opens them externally.
# An allowlist (not a blocklist) so javascript:, file:, data:, relative paths and
# whatever scheme someone invents next all fall through to plain text.
_SAFE_LINK_PREFIXES = ("http://", "https://", "mailto:")

_Env = MutableMapping[str, Any]  # markdown-it's render env; carries {"dark": bool}
_MONO = "'JetBrains Mono','Cascadia Code',Consolas,'DejaVu Sans Mono',monospace"

# Colours for the non-code chrome and the code blocks, per theme: app.theme owns every colour.
_THEME = MARKDOWN


def _safe_href(href: str) -> bool:
    """True if ``href`` may become a clickable link (strict scheme allowlist)."""
    return href.lower().startswith(_SAFE_LINK_PREFIXES)


@lru_cache(maxsize=64)
def _lexer_for(lang: str) -> Lexer:
    """Lexer for a fence info word; plain text when unknown.

    No ``guess_lexer``: it tries every lexer and is far too slow to run on
    each streaming tick, and it guesses wrong on short snippets anyway.
    ``stripnl=False`` keeps deliberate leading blank lines of the snippet.
    """
    try:
        return get_lexer_by_name(lang, stripnl=False) if lang else TextLexer(stripnl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False)


@lru_cache(maxsize=2)
def _formatter(dark: bool) -> tuple[HtmlFormatter, str, str]:
    """Inline-style formatter plus the style's background/foreground colours.

    ``noclasses=True`` because QTextDocument cannot use a class stylesheet
    reliably; ``nowrap=True`` because we build our own ``<pre>``. The default
    foreground is returned separately since Pygments emits no span for plain
    text, which would otherwise inherit a palette colour unreadable on the
    block background.
    """
    style_name = _THEME[dark]["pygments"]
    style = get_style_by_name(style_name)
    fmt = HtmlFormatter(style=style_name, noclasses=True, nowrap=True)
    fg = style.style_for_token(PygToken.Text).get("color") or ""
    fg = f"#{fg}" if fg else _THEME[dark]["code_fg"]
    return fmt, style.background_color or _THEME[dark]["code_bg"], fg


@lru_cache(maxsize=256)
def _highlight_block(code: str, lang: str, dark: bool) -> str:
    """Full HTML for one code block; cached because streaming re-renders it.

    While a reply streams, every finished code block above the growing tail
    is byte-identical on each tick, so the cache turns repeated highlighting
    into a dict lookup and only the block being written is re-lexed.
    """
    fmt, bg, fg = _formatter(dark)
    body = highlight(code.rstrip("\n"), _lexer_for(lang.lower()), fmt)
    # The formatter ends every line with "\n"; inside <pre> Qt would show the
    # last one as an empty line at the bottom of the block.
    body = body.removesuffix("\n")
    label = (
        (
            f'<p style="margin-top:6px; margin-bottom:0px; font-size:small; color:'
            f'{_THEME[dark]["label"]};">{html.escape(lang)}</p>'
        )
        if lang
        else ""
    )
    return (
        f'{label}<pre style="background-color:{bg}; color:{fg}; font-family:{_MONO}; '
        f'white-space:pre-wrap; margin-top:2px; margin-bottom:8px;">{body}</pre>\n'
    )


def _drop_unsafe_links(state: StateCore) -> None:
    """Core rule: remove link tokens whose href is not allowlisted.

    The link text stays as ordinary inline content. Done on tokens (not in a
    renderer rule) because ``link_close`` cannot see its opener's href. Links
    cannot nest in CommonMark, so a single flag pairs each open with its close.
    """
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        kept: list[Token] = []
        dropping = False
        for tok in block.children:
            if tok.type == "link_open" and not _safe_href(str(tok.attrGet("href") or "")):
                dropping = True
                continue
            if tok.type == "link_close" and dropping:
                dropping = False
                continue
            kept.append(tok)
        block.children = kept


class _QtRenderer(RendererHTML):
    """HTML renderer with inline styles QTextDocument understands."""

    def _theme(self, env: _Env) -> dict[str, str]:
        return _THEME[bool(env.get("dark"))]

    def fence(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        info = unescapeAll(tokens[idx].info).strip()
        # "python {.cls}" / "py title=x" -> "python": only the first word names the language.
        lang = info.split(maxsplit=1)[0] if info else ""
        return _highlight_block(tokens[idx].content, lang, bool(env.get("dark")))

    def code_block(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        return _highlight_block(tokens[idx].content, "", bool(env.get("dark")))

    def code_inline(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        bg = self._theme(env)["inline_bg"]
        return (
            f'<code style="background-color:{bg}; font-family:{_MONO};">'
            f"{html.escape(tokens[idx].content, quote=False)}</code>"
        )

    def image(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        # Never emit <img>: Qt would try to resolve the src, and a remote URL
        # in model output is a tracking pixel / privacy leak in an offline app.
        alt = self.renderInlineAsText(tokens[idx].children or [], options, env)
        text = f"[image: {alt}]" if alt else "[image]"
        return f'<span style="color:{self._theme(env)["label"]};">{html.escape(text, quote=False)}</span>'

    def link_open(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        # Qt colours anchors from the palette; in dark mode that is often too dim.
        tokens[idx].attrSet("style", f"color:{self._theme(env)['link']};")
        return self.renderToken(tokens, idx, options, env)

    def table_open(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        # Attributes, not CSS: Qt honours these on <table> but little table CSS.
        for name, value in (
            ("border", "1"),
            ("cellspacing", "0"),
            ("cellpadding", "4"),
            (
                "style",
                (f"border-collapse:collapse; border-color:{self._theme(env)['border']}; margin-bottom:8px;"),
            ),
        ):
            tokens[idx].attrSet(name, value)
        return self.renderToken(tokens, idx, options, env)

    def th_open(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        align = tokens[idx].attrGet("style") or ""  # markdown-it's text-align, kept
        tokens[idx].attrSet("style", f"{align}; background-color:{self._theme(env)['th_bg']};".lstrip("; "))
        return self.renderToken(tokens, idx, options, env)

    def blockquote_open(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: _Env) -> str:
        # Qt has no border-left on blocks; indentation + muted colour reads as a quote.
        tokens[idx].attrSet(
            "style", f"color:{self._theme(env)['quote']}; margin-left:12px; margin-right:0px;"
        )
        return self.renderToken(tokens, idx, options, env)


def _build_parser() -> MarkdownIt:
    """Build the shared parser once: MarkdownIt construction is not free."""
    md = MarkdownIt(
        "commonmark", {"html": False, "linkify": False, "typographer": False}, renderer_cls=_QtRenderer
    ).enable(["table", "strikethrough"])
    # Accept every destination at parse time so a "javascript:" link still parses
    # as a link and is then reduced to its text by _drop_unsafe_links, instead of
    # markdown-it's default of leaving the raw "[text](javascript:...)" visible.
    md.validateLink = lambda url: True  # type: ignore[method-assign]
    md.core.ruler.push("kvdeck_drop_unsafe_links", _drop_unsafe_links)
    return md


_MD = _build_parser()


# A link reference definition ("[x]: url", also inside quotes/lists) can turn
# "[x]" in *earlier* text into a link, invalidating cached HTML; such texts are
# rare, so they take the full (uncached) path.
_REF_DEF = re.compile(r"^[ \t>*+\-\d.)]*\[[^\]\n]+\]:", re.MULTILINE)


@dataclass(frozen=True)
class _Stable:
    """HTML of a text prefix made only of finished top-level blocks.

    ``key`` is ``src`` plus the complete line that closed its last block: that
    line decided the closing, so a text may reuse ``html`` only if it starts
    with ``key`` (a regenerated reply sharing ``src`` alone may not).
    """

    src: str
    key: str
    html: str
    dark: bool


_STABLE: list[_Stable] = []  # most recently used last
_STABLE_SLOTS = 8  # a few concurrent messages (e.g. re-render on theme switch)


def _stable_cut(tokens: Sequence[Token], complete_lines: int) -> int:
    """Index of the first token of the last top-level block that is still open.

    CommonMark closes a block for good once the next top-level block starts,
    so every block before the last one is final -- provided the line that
    started that next block is complete (a lone ``#`` line is a heading only
    until ``x`` arrives and turns ``#x`` into paragraph text again).
    """
    cut = 0
    for i, tok in enumerate(tokens):
        if i and tok.level == 0 and tok.nesting >= 0 and tok.map and tok.map[0] < complete_lines:
            cut = i
    return cut


def render_markdown(text: str, *, dark: bool = False) -> str:
    """Render (possibly partial, still streaming) model output to Qt HTML.

    Called every ~50 ms with a growing prefix, so it is incremental: finished
    top-level blocks are cached as HTML and only the text from the last open
    block on is parsed again (pure-Python parsing of a whole 20 KB reply
    costs tens of ms). An unclosed ``` fence renders as a code block to the
    end. Output equals a full ``_MD.render`` (tests check every prefix).
    Not thread-safe; call it from the GUI thread.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _REF_DEF.search(text):
        return _MD.render(text, {"dark": dark}).rstrip("\n")
    base = max(
        (s for s in _STABLE if s.dark == dark and text.startswith(s.key)),
        key=lambda s: len(s.src),
        default=None,
    )
    head_src, head_html = (base.src, base.html) if base else ("", "")
    tail = text[len(head_src) :]
    env: dict[str, Any] = {"dark": dark}
    tokens = _MD.parse(tail, env)
    cut = _stable_cut(tokens, tail.count("\n"))
    done = _MD.renderer.render(tokens[:cut], _MD.options, env)
    rest = _MD.renderer.render(tokens[cut:], _MD.options, env)
    if base is not None:
        _STABLE.remove(base)
    if cut:
        pos = 0
        for _ in range(tokens[cut].map[0]):  # type: ignore[index]
            pos = tail.index("\n", pos) + 1
        end = tail.index("\n", pos) + 1  # the deciding line is complete (see _stable_cut)
        base = _Stable(head_src + tail[:pos], head_src + tail[:end], head_html + done, dark)
    if base is not None:
        _STABLE.append(base)
        del _STABLE[:-_STABLE_SLOTS]
    # A trailing newline after the last block becomes a stray space in Qt.
    return (head_html + done + rest).rstrip("\n")


def escape_plain(text: str) -> str:
    """Render a user's own message as literal text with its line breaks kept.

    Users type plain text, not Markdown, so ``*x*`` or ``<b>`` must appear as
    typed. ``<br>`` carries line breaks (robust in every Qt version) and
    ``white-space:pre-wrap`` keeps runs of spaces and indentation.
    """
    body = html.escape(text.replace("\r\n", "\n").replace("\r", "\n"), quote=False)
    return f'<p style="white-space:pre-wrap; margin:0px;">{body.replace(chr(10), "<br>")}</p>'


def code_blocks(text: str) -> list[str]:
    """The code of each code block of ``text``, in the order the rendered HTML shows them (the
    transcript's "copy code" links number them so)."""
    tokens = _MD.parse(text.replace("\r\n", "\n").replace("\r", "\n"), {})
    return [t.content.rstrip("\n") for t in tokens if t.type in ("fence", "code_block")]
