"""The About dialog, and the same facts as text for ``kvdeck --version``.

A bug report starts with "which build is this?": KV Deck's version, the llama.cpp runtime
(llama-cpp-python and the llama.cpp commit it was built from), Qt, the GPU backend and where
the data lives. None of it loads llama.cpp: the window's process never does (a native crash
would take the window down), so the commit is read from the CMake package file that the
llama-cpp-python build installs (the bundle keeps a copy next to the libraries).
"""

from __future__ import annotations

import html
import importlib.metadata
import re
from pathlib import Path

import PySide6
from PySide6.QtCore import Qt, QUrl, qVersion
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from app.appinfo import APP_NAME, resource_path
from engine.core import paths
from engine.core.build import gpu_backend, rpc_in_build, runtime_lib_dir
from engine.core.errors import KvDeckError

LICENSE = (
    "MIT License. Models run on llama.cpp (MIT) through llama-cpp-python (MIT); "
    "the window uses Qt for Python (LGPLv3)."
)
_COMMIT = re.compile(r"set\(LLAMA_BUILD_COMMIT\s+([0-9A-Za-z]+)\)")


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def llama_cpp_commit() -> str:
    """The llama.cpp commit the runtime was built from, or "unknown" (e.g. a wheel without CMake files)."""
    lib = runtime_lib_dir()
    if lib is None:
        return "unknown"
    config = Path("cmake") / "llama" / "llama-config.cmake"
    for candidate in (lib / config, lib.parent.parent / "lib" / config):  # bundle, then site-packages
        try:
            match = _COMMIT.search(candidate.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if match:
            return match.group(1)
    return "unknown"


def versions() -> dict[str, str]:
    """Label -> value, in the order the dialog and ``--version`` show them."""
    try:
        data = str(paths.data_dir())
    except KvDeckError as exc:
        data = str(exc)
    return {
        APP_NAME: dist_version("kvdeck"),
        "llama.cpp": llama_cpp_commit(),
        "llama-cpp-python": dist_version("llama_cpp_python"),
        "Qt": qVersion(),
        "PySide6": PySide6.__version__,
        "GPU backend": gpu_backend(),
        "RPC workers": "yes (llama.cpp RPC backend built in)"
        if rpc_in_build()
        else "no (runtime built without -DGGML_RPC=ON)",
        "Data folder": data,
    }


def version_text() -> str:
    v = versions()
    width = max(len(k) for k in v)
    return "\n".join(f"{k + ':':<{width + 1}} {value}" for k, value in v.items())


class AboutDialog(QDialog):
    """Name, icon and versions; the data folder is a link that opens it in the file manager."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"About {APP_NAME}")
        self.versions = versions()
        icon = QLabel(self)
        icon.setPixmap(QIcon(str(resource_path("icons/kvdeck.svg"))).pixmap(96, 96))
        icon.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title = QLabel(
            f"<h2>{APP_NAME} {self.versions[APP_NAME]}</h2>"
            "Run GGUF language models offline and see where the memory goes.",
            self,
        )
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        form = QFormLayout()
        self.fields: dict[str, QLabel] = {}
        for key, value in self.versions.items():
            if key == APP_NAME:
                continue
            label = QLabel(value, self)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
            if key == "Data folder" and Path(value).is_dir():
                label.setText(f'<a href="{QUrl.fromLocalFile(value).toString()}">{html.escape(value)}</a>')
                label.setOpenExternalLinks(True)
            self.fields[key] = label
            form.addRow(f"{key}:", label)
        license_label = QLabel(LICENSE, self, wordWrap=True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(icon)
        layout.addWidget(self.title)
        layout.addLayout(form)
        layout.addWidget(license_label)
        layout.addWidget(buttons)
