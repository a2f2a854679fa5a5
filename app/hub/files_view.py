"""A repository's GGUF models with a memory verdict each, computed before anything is downloaded.

The verdicts read every model's header with range requests, a few at a time, which takes
from a fraction of a second to many seconds on a slow link; so they run in the background
(`app.background`) and stream in: the engine's ``on_result`` callback is the worker's
``report``, which reaches the GUI thread as a queued signal, and each verdict re-sorts the
list best fit first (`engine.hub.verdict.sort_key`, the CLI's order). A newer repository
choice makes late verdicts of an older one stale: they are dropped by ticket.

The tree is rebuilt on every verdict instead of sorted in place: rows carry a button each
(`setItemWidget`), and a few dozen rows rebuild faster than a person can see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QPushButton,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.background import run_in_background
from app.hub.text import role_text, size_text, verdict_text
from engine.core.memory_types import Device
from engine.hub import verdict as hv
from engine.hub.client import RepoListing
from engine.hub.names import RemoteModel

log = logging.getLogger(__name__)
COLUMNS = ("File · memory verdict on this machine", "Quant", "Size", "Role", "")
NAME, Q, SIZE, ROLE, ACTION = range(5)
VERDICT = Qt.ItemDataRole.UserRole + 1  # the verdict line of a row (data of the NAME column)
LOADABLE = ("model", "draft")  # a projector or an MTP head is not a chat model on its own


def _judge(
    models: list[RemoteModel], revision: str, devices: list[Device] | None, report: Callable[[object], None]
) -> list[hv.Candidate]:
    """On the worker thread: the engine's verdicts, each reported as it is judged."""
    return hv.judge(models, revision, devices, on_result=report)


class FilesView(QWidget):
    """The models of one repository listing, best fit first, with Download or Load buttons."""

    downloadRequested = Signal(object)  # RemoteModel
    loadRequested = Signal(str)  # a local path
    verdictsDone = Signal()

    def __init__(
        self, devices: Callable[[], list[Device]] | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._devices = devices
        self.tree = QTreeWidget(self)
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(True)
        # the verdict is the point of the list: it is the second line under the file name, in
        # the widest column, so a narrow dock does not cut it off in a column of its own; a
        # line too long still loses its end, not its gist (the whole is the row's tooltip)
        self.tree.setUniformRowHeights(False)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        for col in (Q, SIZE, ROLE, ACTION):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tree)
        self.listing: RepoListing | None = None
        self.candidates: dict[str, hv.Candidate] = {}  # by model name, as they arrive
        self.local: dict[str, Path] = {}  # model name -> downloaded file (cache or queue)
        self.busy: set[str] = set()  # models queued or downloading
        self._ticket = 0
        self.judging = False

    # ------------------------------------------------------------------ data in
    def clear(self) -> None:
        self._ticket += 1
        self.listing, self.judging = None, False
        self.candidates.clear()
        self.local.clear()
        self.tree.clear()

    def show_listing(self, listing: RepoListing, local: dict[str, Path]) -> None:
        """Show `listing` at once (verdicts "checking…"), then judge it in the background."""
        self.clear()
        self.listing, self.local = listing, dict(local)
        self._rebuild()
        if not listing.models:
            return
        devices = None
        if self._devices is not None:
            try:
                devices = self._devices()
            except Exception:  # noqa: BLE001  (telemetry trouble: the engine asks the machine)
                log.warning("reading the plan devices failed", exc_info=True)
        ticket, self.judging = self._ticket, True
        run_in_background(
            _judge,
            list(listing.models),
            listing.revision,
            devices,
            parent=self,
            name="kvdeck-hub-verdicts",
            on_progress=lambda c: self._on_candidate(ticket, c),
            on_result=lambda cs: self._on_all(ticket, cs),
            on_error=lambda exc: self._on_failed(ticket, exc),
        )

    def set_busy(self, name: str, busy: bool) -> None:
        (self.busy.add if busy else self.busy.discard)(name)
        self._rebuild()

    def set_local(self, name: str, path: Path) -> None:
        self.busy.discard(name)
        self.local[name] = path
        self._rebuild()

    # ------------------------------------------------------------------ verdicts arrive
    def _on_candidate(self, ticket: int, c: object) -> None:
        if ticket != self._ticket or not isinstance(c, hv.Candidate):
            return
        self.candidates[c.model.name] = c
        self._rebuild()

    def _on_all(self, ticket: int, cands: list[hv.Candidate]) -> None:
        if ticket != self._ticket:
            return
        self.candidates = {c.model.name: c for c in cands}
        self.judging = False
        self._rebuild()
        self.verdictsDone.emit()

    def _on_failed(self, ticket: int, exc: BaseException) -> None:
        """A bug in the verdicts (the engine turns Hub trouble into per-file errors): the
        files stay listed and downloadable, each saying why it has no verdict."""
        if ticket != self._ticket or self.listing is None:
            return
        log.error("memory verdicts failed", exc_info=exc)
        text = f"no verdict: {type(exc).__name__}: {exc}"
        for m in self.listing.models:
            self.candidates.setdefault(m.name, hv.Candidate(m, None, text, 0, 0.0))
        self.judging = False
        self._rebuild()
        self.verdictsDone.emit()

    # ------------------------------------------------------------------ rows
    def ordered(self) -> list[RemoteModel]:
        """The listing's models, best fit first; those still being judged after the rest."""
        if self.listing is None:
            return []
        judged = sorted(
            (self.candidates[m.name] for m in self.listing.models if m.name in self.candidates),
            key=hv.sort_key,
        )
        waiting = [m for m in self.listing.models if m.name not in self.candidates]
        return [c.model for c in judged] + waiting

    def rows(self) -> list[QTreeWidgetItem]:
        """The top-level rows (one per model), in display order."""
        found = (self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount()))
        return [item for item in found if item is not None]

    def row_of(self, name: str) -> QTreeWidgetItem | None:
        return next((r for r in self.rows() if r.data(NAME, Qt.ItemDataRole.UserRole) == name), None)

    def _rebuild(self) -> None:
        current = self.tree.currentItem()
        keep = current.data(NAME, Qt.ItemDataRole.UserRole) if current is not None else None
        expanded = {r.data(NAME, Qt.ItemDataRole.UserRole) for r in self.rows() if r.isExpanded()}
        scroll = self.tree.verticalScrollBar().value()
        self.tree.setUpdatesEnabled(False)
        try:
            self.tree.clear()
            for m in self.ordered():
                item = self._item(m)
                self.tree.addTopLevelItem(item)
                self.tree.setItemWidget(item, ACTION, self._button(m))
                item.setExpanded(m.name in expanded)
                if m.name == keep:
                    self.tree.setCurrentItem(item)
        finally:
            self.tree.setUpdatesEnabled(True)
        self.tree.verticalScrollBar().setValue(scroll)

    def _item(self, m: RemoteModel) -> QTreeWidgetItem:
        c = self.candidates.get(m.name)
        verdict = verdict_text(c) if c is not None else "checking…"
        parts = (
            ""
            if m.n_parts == 1
            else f" · {m.n_parts} parts"
            if m.complete
            else f" · {len(m.files)} of {m.n_parts} parts (incomplete)"
        )
        item = QTreeWidgetItem(
            [f"{m.name}{parts}\n{verdict}", m.quant, size_text(m.size), role_text(m.role), ""]
        )
        item.setData(NAME, Qt.ItemDataRole.UserRole, m.name)
        item.setData(NAME, VERDICT, verdict)
        item.setToolTip(NAME, f"{m.repo} · {m.name}\n{verdict}")
        style = self.style()
        if c is not None:
            sp = QStyle.StandardPixmap
            icon = (
                sp.SP_MessageBoxInformation
                if m.role == "mmproj"
                else sp.SP_MessageBoxWarning
                if c.verdict is None
                else sp.SP_DialogApplyButton
                if c.verdict.fits
                else sp.SP_DialogCancelButton
            )
            item.setIcon(NAME, style.standardIcon(icon))
        item.setTextAlignment(SIZE, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if m.n_parts > 1:
            for f in m.files:
                child = QTreeWidgetItem([f.name.rsplit("/", 1)[-1], "", size_text(f.size), "", ""])
                child.setTextAlignment(SIZE, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                child.setToolTip(NAME, f.name)
                item.addChild(child)
        return item

    def _button(self, m: RemoteModel) -> QPushButton:
        path = self.local.get(m.name)
        if path is not None:
            button = QPushButton("Load" if m.role in LOADABLE else "Downloaded")
            button.setEnabled(m.role in LOADABLE)
            button.setToolTip(str(path))
            button.clicked.connect(lambda _=False, p=str(path): self.loadRequested.emit(p))
        elif m.name in self.busy:
            button = QPushButton("In queue")
            button.setEnabled(False)
        else:
            button = QPushButton("Download")
            if not m.complete:
                button.setEnabled(False)
                button.setToolTip(f"the listing has {len(m.files)} of its {m.n_parts} parts")
            button.clicked.connect(lambda _=False, mm=m: self.downloadRequested.emit(mm))
        button.setObjectName(f"hub-action:{m.name}")
        return button

    def button_for(self, name: str) -> QPushButton | None:
        item = self.row_of(name)
        widget = self.tree.itemWidget(item, ACTION) if item is not None else None
        return widget if isinstance(widget, QPushButton) else None
