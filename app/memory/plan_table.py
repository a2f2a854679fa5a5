"""The dashboard's predicted-against-measured table, which fits the Memory dock at any width."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QHeaderView, QStyleOptionViewItem, QTableWidget

FULL_ERROR = Qt.ItemDataRole.UserRole + 1  # an error cell's whole text: "+2.8 KiB (+0.0 %)"


class PlanTable(QTableWidget):
    """Predicted against measured, every row shown without an inner scroll bar. Where the dock is
    too narrow for the whole error ("+2.8 KiB (+0.0 %)") the column shows the share alone and the
    bytes move to its tooltip, so the dashboard never scrolls sideways (1000×700 and up). The
    columns are sized here from every row (Qt's resize-to-contents measures only the rows in
    the viewport, and a stretched last section keeps at least its 100 px default), the error
    column taking what is left."""

    def __init__(self, rows: int, columns: int) -> None:
        super().__init__(rows, columns)
        self._short: list[int] = []  # column widths with the error's share alone
        self._full: list[int] = []  # ... with the whole error
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def fit_rows(self) -> None:
        """Call after filling: the column widths of both forms, the minimum width, the height."""
        self._set_errors(full=False)
        self._short = self._column_widths()
        self._set_errors(full=True)
        self._full = self._column_widths()
        self.setMinimumWidth(2 * self.frameWidth() + sum(self._short))
        self._arrange()
        self.setFixedHeight(
            self.horizontalHeader().sizeHint().height()
            + 2 * self.frameWidth()
            + sum(self.rowHeight(i) for i in range(self.rowCount()))
        )

    def _column_widths(self) -> list[int]:
        option = QStyleOptionViewItem()
        self.initViewItemOption(option)
        delegate, model, grid = self.itemDelegate(), self.model(), int(self.showGrid())
        widths = []
        for c in range(self.columnCount()):
            cells = [
                delegate.sizeHint(option, model.index(r, c)).width()
                for r in range(self.rowCount())
                if self.columnSpan(r, c) == 1 and self.item(r, c) is not None
            ]
            widths.append(max([self.horizontalHeader().sectionSizeHint(c), *cells]) + grid)
        return widths

    def _arrange(self) -> None:
        room = self.width() - 2 * self.frameWidth()
        full = room >= sum(self._full)
        self._set_errors(full)
        widths = self._full if full else self._short
        widths = [*widths[:-1], max(widths[-1], room - sum(widths[:-1]))]  # the error takes the rest
        for c, width in enumerate(widths):
            self.setColumnWidth(c, width)

    def _set_errors(self, full: bool) -> None:
        for r in range(self.rowCount()):
            item = self.item(r, 3)
            whole = item.data(FULL_ERROR) if item is not None else None
            if item is not None and whole:
                share = whole.rpartition(" (")[2].rstrip(")") if whole.endswith(" %)") else whole
                item.setText(whole if full else share)
                item.setToolTip("" if full else whole)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._full:
            self._arrange()
