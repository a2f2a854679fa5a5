"""The window's menus and keyboard shortcuts: File, Edit, Chat, View, Server, Help.

Everything a button does is also a menu entry with a shortcut, so the window can be driven
from the keyboard and a closed Memory dock can always be brought back (View → Memory). The
chat pane and sidebar are asked for what they offer (``getattr``): a conversation search field,
when the sidebar has one, takes Ctrl+F; otherwise Ctrl+F finds text in the transcript.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QInputDialog,
    QLabel,
    QMenu,
    QVBoxLayout,
    QWidget,
)

from app.theme import SETTING as THEME_SETTING
from app.theme import THEMES, apply_theme
from engine.core.errors import KvDeckError

SEND_KEY_SETTING = "send_with_ctrl_enter"


def _action(
    menu: QMenu, text: str, slot: Callable[[], object], shortcut: str | QKeySequence = "", tip: str = ""
) -> QAction:
    action = menu.addAction(text)
    action.triggered.connect(lambda _checked=False: slot())  # Qt passes `checked`; slots take none
    if shortcut:
        action.setShortcut(QKeySequence(shortcut))
    if tip:
        action.setStatusTip(tip)
    return action


class WindowMenus:
    """Builds the menu bar of ``win`` and keeps the handles tests and other panes need."""

    def __init__(self, win: Any) -> None:  # app.main_window.MainWindow (which imports this module)
        self.win = win
        bar = win.menuBar()
        # ---------------------------------------------------------------- File
        self.file_menu = bar.addMenu("&File")
        self.new_chat = _action(
            self.file_menu, "&New chat", win._new_conversation, QKeySequence.StandardKey.New
        )
        self.open_file = _action(
            self.file_menu, "&Open GGUF…", win.choose_file, QKeySequence.StandardKey.Open
        )
        self.recent_menu = self.file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self._fill_recent()
        self.models_section = self.file_menu.addSeparator()  # other panes add their entries here
        self.file_menu.addSeparator()
        self.quit = _action(self.file_menu, "&Quit", win.close, QKeySequence.StandardKey.Quit)
        self.quit.setShortcuts([QKeySequence("Ctrl+Q")])  # the standard key is empty on some desktops
        # ---------------------------------------------------------------- Edit
        edit = bar.addMenu("&Edit")
        self.copy = _action(edit, "&Copy", self.copy_selection, QKeySequence.StandardKey.Copy)
        self.find = _action(edit, "&Find…", self.find_text, QKeySequence.StandardKey.Find)
        self.find.setShortcuts([QKeySequence("Ctrl+F")])
        # ---------------------------------------------------------------- Chat
        chat = bar.addMenu("&Chat")
        self.send = _action(
            chat, "&Send", win.chat.send, "Ctrl+Return", "Send the message (Ctrl+Enter works in both modes)"
        )
        self.send.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])
        self.stop = _action(chat, "S&top generating", win.chat.stop, "Esc")
        self.regenerate = _action(chat, "&Regenerate last reply", win.chat.regenerate_last, "Ctrl+R")
        chat.addSeparator()
        self.ctrl_enter = chat.addAction("Send with Ctrl+Enter (Enter adds a line)")
        self.ctrl_enter.setCheckable(True)
        self.ctrl_enter.setChecked(bool(win.store.get_setting(SEND_KEY_SETTING, False)))
        self.ctrl_enter.toggled.connect(self._set_send_key)
        self._set_send_key(self.ctrl_enter.isChecked(), save=False)
        # ---------------------------------------------------------------- View
        view = bar.addMenu("&View")
        memory = win.memory.toggleViewAction()
        memory.setText("&Memory panel")
        memory.setShortcut(QKeySequence("Ctrl+M"))
        view.addAction(memory)
        machines = win.machines.toggleViewAction()  # llama.cpp RPC workers (app.machines)
        machines.setText("M&achines (RPC workers)")
        view.addAction(machines)
        self.theme_menu = view.addMenu("&Theme")
        self.theme_group = QActionGroup(self.theme_menu)
        chosen = win.store.get_setting(THEME_SETTING, "system")
        self.theme_actions: dict[str, QAction] = {}
        for name in THEMES:
            act = self.theme_menu.addAction(
                {"system": "Follow the &system", "light": "&Light", "dark": "&Dark"}[name]
            )
            act.setCheckable(True)
            act.setChecked(name == chosen)
            act.triggered.connect(lambda _c=False, n=name: self.set_theme(n))
            self.theme_group.addAction(act)
            self.theme_actions[name] = act
        # ---------------------------------------------------------------- Server
        server = bar.addMenu("&Server")
        server.addAction(win.server_toggle.action)
        self.server_settings = _action(server, "Server &settings…", self.show_server_settings)
        # ---------------------------------------------------------------- Help
        help_menu = bar.addMenu("&Help")
        self.shortcuts = _action(
            help_menu, "&Keyboard shortcuts", self.show_shortcuts, QKeySequence.StandardKey.HelpContents
        )
        self.about = _action(help_menu, "&About KV Deck", win.show_about)

    # ------------------------------------------------------------------ File
    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = [p for p in self.win.store.get_setting("recent_models", []) if Path(p).is_file()]
        for path in recent:
            act = self.recent_menu.addAction(Path(path).name)
            act.setToolTip(path)
            act.triggered.connect(lambda _c=False, p=path: self.win.open_model(p))
        if not recent:
            self.recent_menu.addAction("(no recent models)").setEnabled(False)

    # ------------------------------------------------------------------ Edit
    def copy_selection(self) -> None:
        """Copy what is selected where the focus is, else the transcript's selection."""
        focus = QApplication.focusWidget()
        if focus is not None and hasattr(focus, "copy") and focus is not self.win.chat.view:
            focus.copy()  # type: ignore[attr-defined]
            return
        self.win.chat.copy_selection()  # says "Copied"

    def find_text(self) -> None:
        """Ctrl+F: the sidebar's conversation search when it has one, else find in the transcript."""
        if self.win.sidebar.isVisible():
            self.win.sidebar.focus_search()  # titles and text of every conversation (FTS5)
            return
        text, ok = QInputDialog.getText(
            self.win, "Find", "Find in this conversation:", text=getattr(self, "_last_find", "")
        )
        if ok and text:
            self._last_find = text
            self.find_in_transcript(text)

    def find_in_transcript(self, text: str) -> bool:
        """Select the next occurrence (wrapping round); False when there is none."""
        view = self.win.chat.view
        if view.find(text):
            return True
        cursor = view.textCursor()
        cursor.movePosition(cursor.MoveOperation.Start)
        view.setTextCursor(cursor)
        found = view.find(text)
        if not found:
            self.win.show_problem(f"“{text}” is not in this conversation")
        return found

    # ------------------------------------------------------------------ Chat / View
    def _set_send_key(self, ctrl_enter: bool, save: bool = True) -> None:
        prompt = self.win.chat.input
        prompt.ctrl_enter_sends = ctrl_enter
        prompt.setPlaceholderText(
            "Ask anything — Ctrl+Enter sends, Enter for a new line"
            if ctrl_enter
            else "Ask anything — Enter sends, Shift+Enter for a new line"
        )
        if save:
            self._save(SEND_KEY_SETTING, ctrl_enter)

    def set_theme(self, name: str) -> None:
        apply_theme(name)
        self.theme_actions[name].setChecked(True)
        self._save(THEME_SETTING, name)

    def _save(self, key: str, value: object) -> None:
        try:
            self.win.chat._write(self.win.store.set_setting, key, value)
        except KvDeckError as exc:
            self.win.show_problem(str(exc))

    # ------------------------------------------------------------------ dialogs
    def show_server_settings(self) -> None:
        from app.bridges.server_settings import ServerSettingsDialog

        dialog = ServerSettingsDialog(self.win.server_toggle, self.win.store, self.win)
        dialog.problem.connect(self.win.show_problem)
        dialog.open()

    def show_shortcuts(self) -> None:
        dialog = ShortcutsDialog(self.shortcut_rows(), self.win)
        dialog.open()

    def shortcut_rows(self) -> list[tuple[str, str]]:
        """(keys, what they do) for every menu entry that has a shortcut, in menu order."""
        rows = []
        for menu in self.win.menuBar().findChildren(QMenu):
            for act in menu.actions():
                keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in act.shortcuts())
                if keys and (act.text(), keys) not in [(r[1], r[0]) for r in rows]:
                    rows.append((keys, act.text().replace("&", "")))
        rows.append(("Enter / Shift+Enter", "Send / new line (or the other way round, see Chat)"))
        rows.append(("Drop a .gguf file", "Load it"))
        return rows


class ShortcutsDialog(QDialog):
    """Help → Keyboard shortcuts: every key the window answers to, as a table."""

    def __init__(self, rows: list[tuple[str, str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        body = "".join(
            f"<tr><td style='padding-right:18px;'><b>{html.escape(k)}</b></td><td>{html.escape(d)}</td></tr>"
            for k, d in rows
        )
        label = QLabel(f"<table cellspacing='4'>{body}</table>", self)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
        layout.addWidget(buttons)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
