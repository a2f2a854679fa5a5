"""Light, dark or follow-the-system: the one place where KV Deck's colours are defined.

Every other module reads colours from the widget palette (``palette(text)`` in style sheets,
``QPalette`` roles in painters) or from the helpers here, so a dark system theme or the user's
choice in View → Theme never leaves dark text on a dark bubble. The chat transcript is HTML, so
its colours are computed here from the palette and re-rendered when the palette changes.

The tables are plain data so that the Qt-free markdown renderer can read its code colours here.
Explicit light and dark use the Fusion style with the palettes below (the platform style may
ignore a palette); "system" restores the style and palette the application started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Qt is imported where it is used: app.chat.markdown_view reads the tables
    from PySide6.QtGui import QColor, QPalette  # here and must stay free of Qt
    from PySide6.QtWidgets import QApplication

THEMES = ("light", "dark", "system")  # menu order
SETTING = "theme"

_LIGHT = {
    "window": "#f3f3f3",
    "base": "#ffffff",
    "alt": "#f6f6f6",
    "text": "#1b1b1b",
    "button": "#e9e9e9",
    "highlight": "#2f62c9",
    "htext": "#ffffff",
    "link": "#1a56b8",
    "visited": "#6a3aa8",
    "mid": "#b8b8b8",
    "dark": "#8a8a8a",
    "light": "#ffffff",
    "disabled": "#8a8a8a",
    "tip": "#fffbe6",
    "placeholder": "#6b6b6b",
}
_DARK = {
    "window": "#2a2b2e",
    "base": "#1d1e20",
    "alt": "#25262a",
    "text": "#e8e8e8",
    "button": "#35363a",
    "highlight": "#4a7fe0",
    "htext": "#ffffff",
    "link": "#8ab4f8",
    "visited": "#c58af9",
    "mid": "#55575c",
    "dark": "#151618",
    "light": "#4a4c52",
    "disabled": "#8d8f94",
    "tip": "#3a3b3f",
    "placeholder": "#9a9ca1",
}

#: The markdown chrome of a reply, per dark flag (app.chat.markdown_view). Code blocks use a
#: Pygments style whose every token colour meets WCAG AA on its own background (xcode ≥ 5.0:1,
#: monokai ≥ 4.5:1); code_bg / code_fg stand in for a style without them.
MARKDOWN: dict[bool, dict[str, str]] = {
    False: {
        "pygments": "xcode",
        "code_bg": "#f6f8fa",
        "code_fg": "#24292f",
        "inline_bg": "#eef0f3",
        "label": "#57606a",
        "quote": "#57606a",
        "border": "#c8ccd0",
        "th_bg": "#f3f4f6",
        "link": "#0a58c2",
    },
    True: {
        "pygments": "monokai",
        "code_bg": "#272822",
        "code_fg": "#f8f8f2",
        "inline_bg": "#3a3d41",
        "label": "#aeb6c2",
        "quote": "#b4bcc4",
        "border": "#5a5f66",
        "th_bg": "#2f3237",
        "link": "#8ab4f8",
    },
}

_started_with: tuple[str, QPalette] | None = None


def build_palette(dark: bool) -> QPalette:
    """The explicit light or dark palette (all three colour groups)."""
    from PySide6.QtGui import QColor, QPalette

    c = _DARK if dark else _LIGHT
    R = QPalette.ColorRole
    pal = QPalette()
    roles = {
        R.Window: "window",
        R.WindowText: "text",
        R.Base: "base",
        R.AlternateBase: "alt",
        R.Text: "text",
        R.Button: "button",
        R.ButtonText: "text",
        R.BrightText: "htext",
        R.Highlight: "highlight",
        R.HighlightedText: "htext",
        R.Link: "link",
        R.LinkVisited: "visited",
        R.Mid: "mid",
        R.Dark: "dark",
        R.Light: "light",
        R.Midlight: "mid",
        R.Shadow: "dark",
        R.ToolTipBase: "tip",
        R.ToolTipText: "text",
        R.PlaceholderText: "placeholder",
    }
    for role, key in roles.items():
        pal.setColor(role, QColor(c[key]))
    for role in (R.WindowText, R.Text, R.ButtonText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor(c["disabled"]))
    return pal


def apply_theme(choice: str, app: QApplication | None = None) -> None:
    """Switch the whole application to ``choice`` ("system", "light" or "dark"), live."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    global _started_with
    app = app or QApplication.instance()  # type: ignore[assignment]
    if app is None:
        return
    if _started_with is None:
        _started_with = (app.style().name(), QPalette(app.palette()))
    if choice in ("light", "dark"):
        app.setStyle("Fusion")
        app.setPalette(build_palette(choice == "dark"))
        _color_scheme(app, Qt.ColorScheme.Dark if choice == "dark" else Qt.ColorScheme.Light)
    else:
        style, palette = _started_with
        app.setStyle(style)
        app.setPalette(palette)
        _color_scheme(app, Qt.ColorScheme.Unknown)


def _color_scheme(app: QApplication, scheme: object) -> None:
    """Tell Qt (and so the platform's window decorations) which scheme is wanted (Qt ≥ 6.8)."""

    try:
        app.styleHints().setColorScheme(scheme)
    except AttributeError:
        pass


def is_dark(palette: QPalette | None = None) -> bool:
    """Dark when the palette's background is dark: whatever decided it (the user's choice, the
    desktop's scheme, a platform theme that only sets a palette), the palette is what is drawn."""
    from PySide6.QtGui import QGuiApplication, QPalette

    if palette is None:
        app = QGuiApplication.instance()
        palette = app.palette() if app is not None else QPalette()  # type: ignore[union-attr]
    return palette.color(QPalette.ColorRole.Base).lightnessF() < 0.5


def mix(a: QColor, b: QColor, t: float) -> QColor:
    """``a`` moved ``t`` of the way towards ``b``."""
    from PySide6.QtGui import QColor

    return QColor.fromRgbF(
        a.redF() + (b.redF() - a.redF()) * t,
        a.greenF() + (b.greenF() - a.greenF()) * t,
        a.blueF() + (b.blueF() - a.blueF()) * t,
    )


def luminance(c: QColor) -> float:
    """WCAG relative luminance."""

    def lin(v: float) -> float:
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(c.redF()) + 0.7152 * lin(c.greenF()) + 0.0722 * lin(c.blueF())


def contrast(a: QColor, b: QColor) -> float:
    """WCAG contrast ratio (1 to 21); AA for normal text is 4.5."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def readable_on(bg: QColor, preferred: QColor, fallback: QColor, minimum: float = 4.5) -> QColor:
    """``preferred`` when it reads on ``bg``, else moved towards ``fallback`` until it does."""

    for step in range(11):
        c = mix(preferred, fallback, step / 10)
        if contrast(c, bg) >= minimum:
            return c
    return fallback


@dataclass(frozen=True)
class ChatColors:
    """Colours of the transcript's HTML, as ``#rrggbb`` strings, derived from one palette."""

    dark: bool
    text: str
    user_bg: str
    assistant_bg: str
    muted: str  # "12 tokens · 30 tokens/s"
    error: str  # "(incomplete)"
    link: str


def chat_colors(palette: QPalette | None = None) -> ChatColors:
    """Bubble and text colours for the transcript, every pair AA-readable on this palette."""
    from PySide6.QtGui import QColor, QGuiApplication, QPalette

    if palette is None:
        app = QGuiApplication.instance()
        palette = app.palette() if app is not None else QPalette()  # type: ignore[union-attr]
    R = QPalette.ColorRole
    dark = is_dark(palette)
    base, text = palette.color(R.Base), palette.color(R.Text)
    highlight, link = palette.color(R.Highlight), palette.color(R.Link)
    user_bg = mix(base, highlight, 0.22 if dark else 0.12)
    assistant_bg = mix(base, text, 0.06 if dark else 0.035)
    darkest = user_bg if contrast(user_bg, text) < contrast(assistant_bg, text) else assistant_bg
    text_c = readable_on(darkest, text, QColor("white") if dark else QColor("black"))
    opposite = QColor("white") if dark else QColor("black")
    muted = readable_on(darkest, mix(text_c, base, 0.35), opposite)
    error = readable_on(darkest, QColor(255, 140, 130) if dark else QColor(180, 35, 24), opposite)
    link_c = readable_on(darkest, link, opposite)
    return ChatColors(
        dark=dark,
        text=text_c.name(),
        user_bg=user_bg.name(),
        assistant_bg=assistant_bg.name(),
        muted=muted.name(),
        error=error.name(),
        link=link_c.name(),
    )


def status_color(ok: bool | None, palette: QPalette) -> str:
    """Good / bad / neutral text colour (a verdict, a problem line) readable on ``palette``'s window."""
    from PySide6.QtGui import QColor, QPalette

    window = palette.color(QPalette.ColorRole.Window)
    dark = window.lightnessF() < 0.5
    opposite = QColor("white") if dark else QColor("black")
    if ok is None:
        return readable_on(
            window, mix(palette.color(QPalette.ColorRole.WindowText), window, 0.35), opposite
        ).name()
    good, bad = (
        (QColor(110, 210, 140), QColor(255, 140, 130)) if dark else (QColor(27, 127, 59), QColor(179, 38, 30))
    )
    return readable_on(window, good if ok else bad, opposite).name()


def warning_color(palette: QPalette) -> str:
    """Amber for warnings, readable on the window background."""
    from PySide6.QtGui import QColor, QPalette

    window = palette.color(QPalette.ColorRole.Window)
    dark = window.lightnessF() < 0.5
    return readable_on(
        window,
        QColor(240, 190, 90) if dark else QColor(154, 103, 0),
        QColor("white") if dark else QColor("black"),
    ).name()


def banner_style(palette: QPalette) -> str:
    """The problem banner: a red-tinted band that reads in both themes."""
    from PySide6.QtGui import QColor, QPalette

    window = palette.color(QPalette.ColorRole.Window)
    dark = window.lightnessF() < 0.5
    red = QColor(200, 60, 50)
    bg = mix(window, red, 0.28 if dark else 0.12)
    border = mix(window, red, 0.5 if dark else 0.3)
    fg = readable_on(
        bg, palette.color(QPalette.ColorRole.WindowText), QColor("white") if dark else QColor("black"), 7.0
    )
    return (
        f"#banner {{ background: {bg.name()}; border: 1px solid {border.name()}; border-radius: 4px; }}"
        f"#banner QLabel {{ color: {fg.name()}; }}"
    )


#: Memory chart series colours (a categorical palette legible on light and dark backgrounds).
SERIES = {
    "weights": "#4e79a7",
    "kv": "#f28e2b",
    "recurrent": "#b07aa1",
    "compute": "#59a14f",
    "output": "#e15759",
    "driver": "#9c755f",  # the CUDA driver's share beyond llama.cpp's buffers
    "this_app": "#3d85c6",
    "others": "#e69138",
    "speed": "#59a14f",
    "chosen": "#1a73e8",
    "failed": "#b3261e",
    "point": "#5f6368",
    "ok": "#188038",
    "limit": "#c62828",
}


def series(name: str) -> QColor:
    from PySide6.QtGui import QColor

    return QColor(SERIES[name])
