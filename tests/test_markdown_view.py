"""Tests for app.chat.markdown_view: safety of untrusted model output, code
highlighting, streaming behaviour, speed, and that Qt really accepts the HTML."""

from __future__ import annotations

import re
import time

import pytest

from app.chat import markdown_view
from app.chat.markdown_view import escape_plain, render_markdown

# --- raw HTML is text, never markup ---------------------------------------


@pytest.mark.parametrize(
    "raw, escaped",
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ('<iframe src="http://evil.example/"></iframe>', "&lt;iframe"),
        ("<img src=http://evil.example/pixel.png>", "&lt;img src=http://evil.example/pixel.png&gt;"),
    ],
)
def test_raw_html_inline_is_escaped(raw: str, escaped: str) -> None:
    out = render_markdown(f"before {raw} after")
    assert escaped in out
    assert "<script" not in out and "<iframe" not in out and "<img" not in out


def test_raw_html_block_is_escaped() -> None:
    out = render_markdown('<div onclick="x()">\n<script>alert(1)</script>\n</div>')
    assert "<div" not in out and "<script" not in out
    assert "&lt;script&gt;" in out


def test_module_does_not_import_qt() -> None:
    with open(markdown_view.__file__, encoding="utf-8") as fh:
        source = fh.read()
    assert "PySide6" not in source and "shiboken" not in source


# --- images and links -----------------------------------------------------


@pytest.mark.parametrize(
    "md",
    [
        "![a cat](http://example.com/cat.png)",
        '![a cat](https://example.com/cat.png "title")',
        "![a cat](data:image/png;base64,AAAA)",
        "[![a cat](http://example.com/cat.png)](https://example.com)",
        "![a cat][ref]\n\n[ref]: http://example.com/cat.png",
    ],
)
def test_markdown_image_never_emits_img(md: str) -> None:
    out = render_markdown(md)
    assert "<img" not in out.lower()
    assert "a cat" in out


def test_image_without_alt_has_placeholder() -> None:
    assert "[image]" in render_markdown("![](http://example.com/x.png)")


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "file:///etc/passwd",
        "data:text/html,hi",
        "vbscript:x",
        "relative/path.html",
    ],
)
def test_unsafe_link_dropped_text_kept(href: str) -> None:
    out = render_markdown(f"see [click me]({href}) now")
    assert "<a" not in out
    assert "click me" in out
    assert "href" not in out


def test_unsafe_autolink_dropped() -> None:
    out = render_markdown("<javascript:alert(1)>")
    assert "<a" not in out


@pytest.mark.parametrize(
    "md, href",
    [
        ("[docs](https://example.com/a?b=1)", 'href="https://example.com/a?b=1"'),
        ("[site](http://example.com)", 'href="http://example.com"'),
        ("<https://example.com/x>", 'href="https://example.com/x"'),
        ("[mail](mailto:me@example.com)", 'href="mailto:me@example.com"'),
    ],
)
def test_safe_link_kept(md: str, href: str) -> None:
    out = render_markdown(md)
    assert "<a " in out and href in out


# --- code -----------------------------------------------------------------

PY_BLOCK = '```python\ndef greet(name):\n    return f"hi {name}"  # hello\n```\n'


@pytest.mark.parametrize("dark", [False, True])
def test_python_block_highlighted_with_label(dark: bool) -> None:
    out = render_markdown("Code:\n\n" + PY_BLOCK, dark=dark)
    assert re.search(r'<span style="color:\s*#', out), out
    assert ">python</p>" in out
    assert "<pre" in out and "background-color:" in out
    assert "class=" not in out  # Qt needs inline styles, not classes


def test_dark_and_light_use_different_colours() -> None:
    assert render_markdown(PY_BLOCK, dark=True) != render_markdown(PY_BLOCK, dark=False)


@pytest.mark.parametrize("lang", ["py", "js", "bash", "c++", "rust", "json"])
def test_common_aliases_highlight(lang: str) -> None:
    out = render_markdown(f'```{lang}\nx = 1; if (x) {{ print("a") }}\n```')
    assert "<span style=" in out
    assert f">{lang}</p>" in out


@pytest.mark.parametrize("info", ["no-such-language-xyz", "{.weird}", 'py title="a b"', "", "<script>"])
def test_unknown_or_odd_language_does_not_raise(info: str) -> None:
    out = render_markdown(f"```{info}\n<b>not bold</b>\n```")
    assert "<pre" in out and "bold" in out
    assert "<b>" not in out and "<script>" not in out


def test_code_escapes_html() -> None:
    out = render_markdown("```html\n<script>alert(1)</script>\n```")
    assert "<script>" not in out
    assert "script" in out


def test_indented_code_block_rendered() -> None:
    out = render_markdown("para\n\n    indented code\n")
    assert "<pre" in out and "indented code" in out


def test_inline_code_has_background_and_escapes() -> None:
    out = render_markdown("use `a < b` here")
    assert re.search(r'<code style="[^"]*background-color:', out)
    assert "a &lt; b" in out


def test_unclosed_fence_while_streaming_renders_code() -> None:
    partial = "Here you go:\n\n```python\ndef f():\n    return 1"
    out = render_markdown(partial)
    assert "<pre" in out
    assert "return" in out and "<span style=" in out
    # Every prefix of a growing reply must render without raising.
    full = partial + "\n```\n\nDone. | a |\n|---|\n| 1 |\n"
    for i in range(len(full) + 1):
        render_markdown(full[:i])


# --- incremental (streaming) rendering equals a full render ----------------


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    markdown_view._STABLE.clear()


def _full(text: str, dark: bool = False) -> str:
    return markdown_view._MD.render(text, {"dark": dark}).rstrip("\n")


TRICKY = [
    # "#" alone is a heading until "x" arrives and makes it paragraph text
    "para\n#x more\n# real heading\ntext\n===\n\ntext\n---\n\n***\n",
    "- a\n- b\n\n  continued\n\n- c\n\nafter list\n\n1. x\n2. y\n\n3) z\n7. w\n",
    "> quote\nlazy line\n\n> another\n> > nested\n\nplain\n",
    "a\nb | c\n|---|--:|\n| 1 | 2 |\ntrailing row\n\npara after table\n",
    "```py\ndef f():\n\n    pass\n```\n\n    indented\n\n    more\nafter\n\n~~~\nx\n~~~~\n",
    "- item\n\n  ```js\n  let a = 1;\n  ```\n- next\n\n      code in list?\n\ndone",
    "Windows\r\nline\r\n\r\n```\r\ncode\r\n```\r\n\rtext",
]


@pytest.mark.parametrize("doc", TRICKY)
@pytest.mark.parametrize("dark", [False, True])
def test_streaming_every_prefix_matches_full_render(doc: str, dark: bool) -> None:
    for i in range(len(doc) + 1):
        prefix = doc[:i]
        norm = prefix.replace("\r\n", "\n").replace("\r", "\n")
        assert render_markdown(prefix, dark=dark) == _full(norm, dark), repr(prefix)


def test_streaming_big_message_matches_full_render() -> None:
    text = _big_message()
    for i in list(range(0, len(text), 491)) + [len(text)]:
        assert render_markdown(text[:i]) == _full(text[:i]), i


def test_cache_not_reused_for_different_continuation() -> None:
    # Same first block, but the second reply's next line continues the list.
    first = "- a\n\nb\n\nc"
    second = "- a\n\n  b\n\nc"
    for doc in (first, second, first):
        for i in range(len(doc) + 1):
            assert render_markdown(doc[:i]) == _full(doc[:i]), repr(doc[:i])


def test_reference_links_defined_later_resolve() -> None:
    doc = "see [the docs][d]\n\nmore text\n\n[d]: https://example.com\n"
    for i in range(len(doc) + 1):
        assert render_markdown(doc[:i]) == _full(doc[:i])
    assert 'href="https://example.com"' in render_markdown(doc)


# --- other blocks ---------------------------------------------------------


def test_table_has_border_attributes() -> None:
    out = render_markdown("| a | b |\n|---|--:|\n| 1 | 2 |\n")
    assert "<table" in out
    assert 'border="1"' in out and 'cellspacing="0"' in out and 'cellpadding="4"' in out
    assert "text-align:right" in out


def test_blockquote_lists_strikethrough() -> None:
    out = render_markdown("> quoted\n\n- one\n- two\n\n1. first\n\n~~gone~~")
    assert "<blockquote" in out and "<ul>" in out and "<ol>" in out and "<s>gone</s>" in out


# --- user messages --------------------------------------------------------


def test_escape_plain_keeps_text_and_line_breaks() -> None:
    out = escape_plain("hi <b>there</b>\n*not md*\r\nend")
    assert "&lt;b&gt;there&lt;/b&gt;" in out
    assert "*not md*" in out
    assert out.count("<br>") == 2
    assert "<b>" not in out


# --- speed ----------------------------------------------------------------


def _big_message(target: int = 20_000) -> str:
    chunk = (
        "## Section\n\nSome **bold** text with `inline code` and a [link](https://example.com).\n"
        "- item one\n- item two\n\n"
        "```python\nfor i in range(10):\n    print(i * 2)  # double\n```\n\n"
        "| col | val |\n|-----|-----|\n| a | 1 |\n\n"
    )
    text = ""
    while len(text) < target:
        text += chunk
    return text


def test_render_20kb_is_fast() -> None:
    text = _big_message()
    assert len(text) >= 20_000
    render_markdown(text)  # warm imports and the highlight cache
    times = []
    for _ in range(5):
        markdown_view._STABLE.clear()  # no incremental head: a full parse each time
        times.append(_timed(render_markdown, text))
    assert min(times) < 0.2, f"rendering 20 KB took {min(times) * 1000:.1f} ms"


def test_render_20kb_cold_code_is_fast() -> None:
    # One 20 KB code block not seen before: the worst case for the highlight cache.
    code = "```python\n" + "value = compute(alpha, beta)  # comment\n" * 520
    assert len(code) >= 20_000
    assert _timed(render_markdown, code) < 0.2


def test_streaming_ticks_are_fast() -> None:
    # Simulate a 20 KB reply arriving ~100 chars per 50 ms tick.
    text = _big_message()
    ticks = [_timed(render_markdown, text[:i]) for i in range(100, len(text) + 100, 100)]
    assert max(ticks) < 0.2, f"slowest tick {max(ticks) * 1000:.1f} ms"
    assert sorted(ticks)[len(ticks) // 2] < 0.05


def _timed(fn, arg: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


# --- real Qt --------------------------------------------------------------


@pytest.fixture
def qt_app(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """pytest-qt's ``qapp`` when installed, else a QApplication of our own
    (QApplication, not QGuiApplication, so later widget tests still work)."""
    try:
        return request.getfixturevalue("qapp")
    except pytest.FixtureLookupError:
        pass
    widgets = pytest.importorskip("PySide6.QtWidgets")
    return widgets.QApplication.instance() or widgets.QApplication([])


@pytest.mark.parametrize("dark", [False, True])
def test_html_loads_in_qtextdocument(qt_app, dark: bool) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtGui import QTextDocument

    text = (
        "# Title\n\nText with `x < y` and <script>alert(1)</script> and "
        "![pic](http://example.com/p.png) and [ok](https://example.com).\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n> quote\n\n" + PY_BLOCK
    )
    doc = QTextDocument()
    doc.setHtml(render_markdown(text, dark=dark))
    plain = doc.toPlainText()
    assert "def greet(name):" in plain
    assert 'return f"hi {name}"  # hello' in plain
    assert "<script>alert(1)</script>" in plain  # shown literally, as text
    assert "[image: pic]" in plain
    for leak in ("<span", "<pre", "style=", "&lt;", "<table", "<code"):
        assert leak not in plain, leak
    assert not plain.endswith(" ")


def test_escape_plain_in_qtextdocument(qt_app) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(escape_plain("a <b>x</b>\n    indented *y*\n\nz"))
    assert doc.toPlainText() == "a <b>x</b>\n    indented *y*\n\nz"
