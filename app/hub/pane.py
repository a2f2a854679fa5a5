"""The "Get models" dock: search the Hub, pick a repository, see each file's memory verdict,
download, load.

Offline first: the Hub is an optional source, so nothing here runs on the GUI thread (search,
listing, verdicts and downloads are background work, `app.background` and the download
queue's thread) and every failure (no network, offline mode, a gated or missing repository,
an HTML page instead of JSON, a file that is not a GGUF) is one line in the pane's status
line, never a dialog; the rest of the window keeps working. Nothing reaches the network until
the user searches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.background import run_in_background
from app.hub.downloads_view import DownloadsView
from app.hub.files_view import FilesView
from app.hub.text import count, one_line
from engine.core.errors import KvDeckError
from engine.core.memory_types import Device
from engine.hub import client
from engine.hub.client import RepoHit, RepoListing
from engine.hub.download import cached_file
from engine.hub.jobs import DownloadJob
from engine.hub.names import RemoteModel

log = logging.getLogger(__name__)
SEARCH_LIMIT = 40
_REPO = Qt.ItemDataRole.UserRole


def problem_line(exc: BaseException) -> str:
    """One line for the status: the engine's own sentence, or (a bug) the exception's name."""
    if isinstance(exc, KvDeckError):
        return one_line(str(exc))
    log.error("Hub request failed", exc_info=exc)
    return one_line(f"the Hub request failed: {type(exc).__name__}: {exc}")


def listing_with_local(repo: str) -> tuple[RepoListing, dict[str, Path]]:
    """On a worker thread: the repository's models, and those already in the HF cache (the
    first part's path), so a downloaded file offers Load instead of a second download."""
    listing = client.list_files(repo)
    local: dict[str, Path] = {}
    for m in listing.models:
        found = [cached_file(repo, f.name, listing.revision) for f in m.files]
        if m.files and all(found):
            local[m.name] = found[0]  # type: ignore[assignment]
    return listing, local


class HubPane(QWidget):
    """Search field, results, the chosen repository's files with verdicts, and downloads."""

    modelReady = Signal(str)  # a downloaded model's path (the library should list it)
    loadRequested = Signal(str)

    def __init__(
        self, devices: Callable[[], list[Device]] | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.query = QLineEdit(self)
        self.query.setPlaceholderText(
            "Search GGUF models on the Hugging Face Hub (e.g. qwen3, gemma 3, smollm2) and press Enter"
        )
        self.query.setClearButtonEnabled(True)
        self.query.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search", self)
        self.search_button.clicked.connect(self.search)
        self.status = StatusLine(self)
        self.status.setText("Type a model name and press Enter. Nothing is sent to the Hub until you search.")
        self.results = QTreeWidget(self)
        self.results.setHeaderLabels(["Repository", "Downloads", "Likes", "Updated"])
        self.results.setRootIsDecorated(False)
        self.results.setUniformRowHeights(True)
        self.results.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.results.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.results.header().setStretchLastSection(False)
        for col in (1, 2, 3):
            self.results.header().setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.results.currentItemChanged.connect(self._repo_chosen)
        self.repo_label = QLabel("Files", self)
        self.files = FilesView(devices, self)
        self.files.downloadRequested.connect(self.download)
        self.files.loadRequested.connect(self.loadRequested.emit)
        self.files.verdictsDone.connect(self._verdicts_done)
        self.downloads = DownloadsView(self)
        self.downloads.finished.connect(self._download_finished)
        self.downloads.loadRequested.connect(self.loadRequested.emit)

        row = QHBoxLayout()
        row.addWidget(self.query, 1)
        row.addWidget(self.search_button)
        files_box = _boxed(self.repo_label, self.files)
        downloads_box = _boxed(QLabel("<b>Downloads</b>", self), self.downloads)
        split = QSplitter(Qt.Orientation.Vertical, self)
        split.addWidget(self.results)
        split.addWidget(files_box)
        split.addWidget(downloads_box)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setStretchFactor(2, 1)
        split.setSizes([200, 320, 140])
        split.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        self.searching = False
        self.listing_repo: str | None = None  # the repository whose files are being listed
        self.problem: str | None = None  # the last failure, as shown in the status line
        self._search_ticket = self._list_ticket = 0

    # ------------------------------------------------------------------ status
    def say(self, text: str, problem: bool = False) -> None:
        """One line in the status; a problem is also kept in `problem` until the next one."""
        line = one_line(text)
        self.problem = line if problem else None
        self.status.setText(line, problem)

    # ------------------------------------------------------------------ search
    def search(self) -> None:
        text = self.query.text().strip()
        if not text:
            self.say("Type a model name to search for, then press Enter.")
            return
        self._search_ticket += 1
        ticket, self.searching = self._search_ticket, True
        self.say(f"Searching the Hub for “{text}”…")
        run_in_background(
            client.search,
            text,
            SEARCH_LIMIT,
            parent=self,
            name="kvdeck-hub-search",
            on_result=lambda hits: self._on_hits(ticket, text, hits),
            on_error=lambda exc: self._on_search_error(ticket, exc),
        )

    def _on_hits(self, ticket: int, text: str, hits: list[RepoHit]) -> None:
        if ticket != self._search_ticket:
            return
        self.searching = False
        self.results.clear()
        for h in hits:
            item = QTreeWidgetItem(
                [
                    h.repo + ("  (gated)" if h.gated else ""),
                    count(h.downloads),
                    count(h.likes),
                    h.updated or "—",
                ]
            )
            item.setData(0, _REPO, h.repo)
            item.setToolTip(
                0, h.repo + ("\nGated: accept its terms on the Hub and set HF_TOKEN" if h.gated else "")
            )
            item.setToolTip(1, f"{h.downloads:,} downloads")
            for col in (1, 2):
                item.setTextAlignment(col, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.results.addTopLevelItem(item)
        self.say(
            f"{len(hits)} GGUF repositor{'y' if len(hits) == 1 else 'ies'} for “{text}”"
            + (": pick one to see its files and whether they fit this machine." if hits else ".")
        )

    def _on_search_error(self, ticket: int, exc: BaseException) -> None:
        if ticket != self._search_ticket:
            return
        self.searching = False
        self.results.clear()  # hits of an earlier search would read as answers to this one
        self.say(problem_line(exc), problem=True)

    # ------------------------------------------------------------------ files
    def _repo_chosen(self, current: QTreeWidgetItem | None, _previous: object = None) -> None:
        if current is not None:
            self.open_repo(current.data(0, _REPO))

    def open_repo(self, repo: str | None) -> None:
        """List `repo`'s GGUF models in the background, then judge them."""
        if not repo:
            return
        self._list_ticket += 1
        ticket, self.listing_repo = self._list_ticket, repo
        self.files.clear()
        self.repo_label.setText(f"<b>{repo}</b>")
        self.say(f"Reading the file list of {repo}…")
        run_in_background(
            listing_with_local,
            repo,
            parent=self,
            name="kvdeck-hub-files",
            on_result=lambda out: self._on_listing(ticket, *out),
            on_error=lambda exc: self._on_listing_error(ticket, exc),
        )

    def _on_listing(self, ticket: int, listing: RepoListing, local: dict[str, Path]) -> None:
        if ticket != self._list_ticket:
            return
        for m in listing.models:
            if self.downloads.active(m) is not None:
                self.files.busy.add(m.name)
        n = len(listing.models)
        commit = f" · commit {listing.commit[:7]}" if listing.commit else ""
        self.repo_label.setText(f"<b>{listing.repo}</b> · {n} GGUF model{'s' * (n != 1)}{commit}")
        self.files.show_listing(listing, local)
        if n:
            self.say(
                f"{listing.repo}: reading each file's header for a memory verdict "
                "(nothing is downloaded yet)…"
            )
        else:
            self.say(f"{listing.repo} has no GGUF files.", problem=True)

    def _on_listing_error(self, ticket: int, exc: BaseException) -> None:
        if ticket != self._list_ticket:
            return
        self.say(problem_line(exc), problem=True)

    def _verdicts_done(self) -> None:
        listing = self.files.listing
        if listing is None:
            return
        models = [m for m in listing.models if m.role != "mmproj"]  # projectors get no verdict
        fits = sum(
            1
            for m in models
            if (c := self.files.candidates.get(m.name)) is not None
            and c.verdict is not None
            and c.verdict.fits
        )
        self.say(
            f"{listing.repo}: {fits} of {len(models)} model{'s' * (len(models) != 1)} fit "
            "this machine; best fit first."
        )

    # ------------------------------------------------------------------ downloads
    def download(self, model: RemoteModel) -> DownloadJob | None:
        if self.downloads.active(model) is not None:
            return None
        revision = self.files.listing.revision if self.files.listing is not None else "main"
        try:
            job = self.downloads.add(model, revision)
        except KvDeckError as exc:
            self.say(problem_line(exc), problem=True)
            return None
        self.files.set_busy(model.name, True)
        return job

    def _download_finished(self, job: DownloadJob) -> None:
        here = self.files.listing is not None and self.files.listing.repo == job.model.repo
        if job.state == "done" and job.path is not None:
            if here:
                self.files.set_local(job.model.name, job.path)
            self.say(f"{job.model.name} is downloaded and in the model library.")
            self.modelReady.emit(str(job.path))
            return
        if here:
            self.files.set_busy(job.model.name, False)
        if job.state == "failed":
            self.say(f"{job.model.name}: {job.error or 'the download failed'}", problem=True)
        else:
            self.say(f"{job.model.name}: download cancelled.")


class StatusLine(QWidget):
    """The pane's one line: elided to the width with "…" (the whole line is the tooltip), and
    a warning icon when it is a problem, so a failure does not read like progress."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.icon = QLabel(self)
        size = self.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize)
        self.icon.setPixmap(
            self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning).pixmap(size, size)
        )
        self.icon.hide()
        self.label = QLabel(self)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.icon)
        layout.addWidget(self.label, 1)
        self._text = ""

    def text(self) -> str:
        return self._text

    def setText(self, text: str, problem: bool = False) -> None:  # noqa: N802  (Qt's name)
        self._text = text
        self.icon.setVisible(problem)
        self.setToolTip(text)
        self._elide()

    def resizeEvent(self, event) -> None:  # noqa: N802, ANN001
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = max(20, self.label.width())
        self.label.setText(
            self.label.fontMetrics().elidedText(self._text, Qt.TextElideMode.ElideRight, width)
        )


def _boxed(title: QLabel, body: QWidget) -> QWidget:
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 4, 0, 0)
    title.setTextFormat(Qt.TextFormat.RichText)
    title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    layout.addWidget(title)
    layout.addWidget(body, 1)
    return box


class HubDock(QDockWidget):
    """The pane as a dock ("Get models"), hidden until asked for."""

    def __init__(
        self, devices: Callable[[], list[Device]] | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__("Get models", parent)
        self.setObjectName("hub-dock")
        self.pane = HubPane(devices, self)
        self.setWidget(self.pane)

    def shutdown(self) -> None:
        self.pane.downloads.close_queue()
