"""Server → Server settings…: the API server's port and API key, kept in the chat store.

Without this the window's server always asked for port 8080 (or any free port) and had no key,
so a client on the same machine could not be pointed at a fixed address or be kept out.
Changes apply at the next start; a running server is restarted so they apply now.
"""

from __future__ import annotations

import secrets

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app.bridges.server_toggle import KEY_SETTING, PORT_SETTING, ServerToggle
from engine.core.errors import KvDeckError
from engine.storage.store import ChatStore


class ServerSettingsDialog(QDialog):
    problem = Signal(str)

    def __init__(self, toggle: ServerToggle, store: ChatStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle, self.store = toggle, store
        self.setWindowTitle("API server settings")
        self.port = QSpinBox(self, minimum=0, maximum=65535)
        self.port.setSpecialValueText("any free port")
        self.port.setValue(toggle.port)
        self.key = QLineEdit(toggle.api_key, self, placeholderText="none: any local program may connect")
        self.key.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        generate = QPushButton("Generate", self, clicked=lambda: self.key.setText(secrets.token_urlsafe(24)))
        key_row = QHBoxLayout()
        key_row.addWidget(self.key, 1)
        key_row.addWidget(generate)
        form = QFormLayout(self)
        form.addRow("Port", self.port)
        form.addRow("API key", key_row)
        note = QLabel(
            "Clients send the key as <i>Authorization: Bearer KEY</i>. The server listens on 127.0.0.1 only.",
            self,
            wordWrap=True,
        )
        form.addRow(note)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def accept(self) -> None:
        port, key = self.port.value(), self.key.text().strip()
        try:
            self.store.set_setting(PORT_SETTING, port)
            self.store.set_setting(KEY_SETTING, key)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
        self.toggle.configure(port, key)
        super().accept()
