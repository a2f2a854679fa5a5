"""The draft picker beside the model, and the controller that checks a pair before loading it.

Speculative decoding only helps when the draft shares the target's vocabulary and both fit in
memory, and a user cannot know either by looking at file names. So choosing a draft model first
runs ``kvdeck pair``'s checks (``engine.cli.memory.pair_report``: llama.cpp's own rules in a
throwaway child, plus the memory fit) in the background (``app.background``); the verdict shows beside the picker and
only a compatible draft is loaded. The controller also turns the runtime's counts into the
dashboard's live numbers, with the speed-up measured against the last plain reply and the
acceptance of each draft position. The model's own drafters (its MTP heads, Gemma 4 assistants
found for it) come from ``app.bridges.self_drafting``; the combo is ``app.elided``'s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QWidget

from app.background import run_in_background
from app.bridges.runtime_bridge import RuntimeBridge
from app.bridges.self_drafting import MTP, assistant_label, find_assistants, mtp_label
from app.elided import ElidedCombo
from app.theme import status_color
from engine import protocol as P
from engine.core.memory_types import Device, MemoryPlan, PlanSettings
from engine.core.units import acceptance_by_position
from engine.plan.margins import Margins
from engine.storage.store import ChatStore

NONE, LOOKUP, CHOOSE = "", "lookup", "choose"
MAX_RECENT_DRAFTS = 6


class DraftPicker(QWidget):
    """ "Draft: none / n-gram lookup / <recent drafts> / Choose model…" and the pair's verdict."""

    chosen = Signal(str, str)  # mode ("", "lookup", "model", "choose"), path

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = ElidedCombo(self)  # "the model's own MTP heads (3 l…" where narrow
        self.combo.about = (  # its tooltip, under the entry shown in whole
            "Speculative decoding: a draft proposes tokens, the model checks "
            "them in one batch. The reply is the same, only faster or slower."
        )
        self.verdict = QLabel(self)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Draft:"))
        layout.addWidget(self.combo)
        layout.addWidget(self.verdict)
        self._state: tuple[str, str] = (NONE, "")
        self._own: list[tuple[str, str, str]] = []  # self-drafting entries (app.bridges.self_drafting)
        self._recent: list[str] = []
        self.set_items([])
        self.combo.activated.connect(self._on_activated)

    def set_items(self, recent: list[str]) -> None:
        """Fill the list: none, lookup, the model's own drafters, recent draft models, choose…;
        keeps the shown state."""
        self._recent = recent
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem("none", (NONE, ""))
        self.combo.addItem("n-gram lookup", (LOOKUP, ""))
        for label, mode, path in self._own:
            self.combo.addItem(label, (mode, path))
            self.combo.setItemData(self.combo.count() - 1, path or label, Qt.ItemDataRole.ToolTipRole)
        for path in [p for p in recent if all(p != o[2] for o in self._own)]:
            self.combo.addItem(Path(path).name, ("model", path))
            self.combo.setItemData(self.combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        self.combo.addItem("Choose model…", (CHOOSE, ""))
        self.combo.blockSignals(False)
        self.show_state(*self._state)

    def set_own(self, items: list[tuple[str, str, str]]) -> None:
        """The loaded model's own drafters as (label, mode, path): its MTP heads, assistants."""
        self._own = items
        self.set_items(self._recent)

    @property
    def state(self) -> tuple[str, str]:
        """(mode, path) in effect: what to go back to when a choice is refused."""
        return self._state

    def show_state(self, mode: str, path: str = "") -> None:
        """Show what is in effect, without emitting ``chosen``."""
        self._state = (mode, path)
        for i in range(self.combo.count()):
            if self.combo.itemData(i) == (mode, path if mode == "model" else ""):
                self.combo.blockSignals(True)
                self.combo.setCurrentIndex(i)
                self.combo.blockSignals(False)
                self.combo.fit_current()
                return

    def show_verdict(self, text: str, ok: bool | None, tooltip: str = "") -> None:
        self._ok = ok
        self.verdict.setText(text)
        self.verdict.setStyleSheet(f"color: {status_color(ok, self.palette())}")
        self.verdict.setToolTip(tooltip)

    def _on_activated(self, index: int) -> None:
        mode, path = self.combo.itemData(index)
        self.chosen.emit(mode, path)


#: What a failed pairing rule means, in words a user without llama.cpp jargon can act on.
PLAIN_REASONS = {
    "vocabulary type": "the two models split text into different tokens",
    "vocabulary size": "the two models split text into different tokens",
    "token texts": "the two models split text into different tokens",
    "BOS token": "the two models mark the start of a text differently",
    "EOS token": "the two models mark the end of a text differently",
}


def verdict_text(report: dict[str, Any]) -> tuple[str, str]:
    """Short label and a tooltip with every rule, from ``pair_report``'s dict."""
    rules = "\n".join(f"{'✓' if c['ok'] else '✗'} {c['name']}: {c['detail']}" for c in report["checks"])
    if report["compatible"]:
        return "✓ compatible", rules
    return "✗ not compatible", rules


def incompatible_sentence(draft: str, report: dict[str, Any]) -> str:
    """One short line for the banner: why this draft cannot be used (the rules are in the tooltip)."""
    reasons: list[str] = []
    for c in report["checks"]:
        if not c["ok"]:
            reason = PLAIN_REASONS.get(c["name"], f"{c['name']}: {c['detail']}")
            if reason not in reasons:
                reasons.append(reason)
    return (
        f"{Path(draft).name} cannot be a draft for this model: {'; '.join(reasons)}. "
        "Pick a smaller model of the same family."
    )


def speculation_text(stats: dict[str, Any], plain_tps: float | None) -> str:
    """The dashboard's lines: acceptance, accepted length, counts and speed-up over plain."""
    mode = {"lookup": "n-gram lookup", "mtp": "the model's own MTP heads"}.get(
        stats.get("draft", ""), "draft model"
    )
    drafted, accepted = stats.get("n_drafted", 0), stats.get("n_accepted", 0)
    lines = [
        f"{mode}: {accepted:,} of {drafted:,} drafted tokens accepted"
        + (f" ({accepted / drafted:.0%})" if drafted else "")
    ]
    if stats.get("n_target_decodes"):
        lines.append(
            f"mean accepted length {stats.get('mean_accepted', 0.0):.2f} per verify; "
            f"{stats.get('n_tokens', 0) / stats['n_target_decodes']:.2f} tokens per target decode"
        )
    tps = stats.get("tokens_per_s") or 0.0
    if tps and plain_tps:
        lines.append(
            f"speed-up {tps / plain_tps:.2f}× ({tps:.1f} against {plain_tps:.1f} tokens/s "
            f"of the last plain reply)"
        )
    elif tps:
        lines.append(f"{tps:.1f} tokens/s; send a reply without drafting to measure the speed-up")
    by_position = acceptance_by_position(stats.get("drafted_at", []), stats.get("accepted_at", []))
    return "\n".join(lines + ([by_position] if by_position else []))


class DraftController(QObject):
    """Picker → pair check → bridge; runtime counts → dashboard text; draft plan → plan bars."""

    problem = Signal(str)
    draftPlan = Signal(object)  # MemoryPlan | None: the draft at the target's context
    stats = Signal(str)  # the dashboard's "Speculative decoding" text
    drafterChanged = Signal(str, str)  # (mode, path) now in effect: the context fit makes room for it

    def __init__(
        self,
        picker: DraftPicker,
        bridge: RuntimeBridge,
        store: ChatStore,
        settings: Callable[[], PlanSettings | None],
        devices: Callable[[], list[Device]],
        margins: Callable[[], Margins],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.picker, self.bridge, self.store = picker, bridge, store
        # the window's one "Keep free" setting (Cache & split), as in its other fits
        self._settings, self._devices, self._margins = settings, devices, margins
        self._checking = ""
        self.plain_tps: float | None = None
        self._live: dict[str, Any] = {}
        self._infos: dict[str, Any] = {}  # draft path -> GGUFInfo (read once)
        picker.set_items(self._recent())
        picker.chosen.connect(self.choose)
        bridge.draftLoaded.connect(self._on_draft_loaded)
        bridge.draftFailed.connect(self._on_draft_failed)
        bridge.speculation.connect(self._on_counts)
        bridge.finished.connect(self._on_finished)
        bridge.loaded.connect(self._on_target_loaded)
        self._verdict_for = ""  # the model the shown verdict was checked against

    def _on_target_loaded(self, info: P.Loaded) -> None:
        """Another model: a verdict checked against the previous one no longer applies, and its
        own drafters (MTP heads, assistants beside it or in the library) are offered."""
        if info.path != self._verdict_for and self.bridge.draft_mode != "model":
            self.picker.show_verdict("", None)
        self._publish_plan()
        own = [(mtp_label(info.n_layer_nextn), MTP, "")] if info.n_layer_nextn else []
        self.picker.set_own(own)
        run_in_background(
            find_assistants,
            info.path,
            parent=self,
            name="kvdeck-assistants",
            on_result=lambda found: self.picker.set_own(
                own + [(assistant_label(p), "model", p) for p in found]
            ),
            on_error=lambda _exc: None,  # offering assistants is a convenience; "Choose model…" remains
        )

    def _start_folder(self) -> str:
        """Where "Choose model…" opens: the last folder a model came from, else the loaded
        model's folder (where its smaller siblings usually are), else the home folder."""
        last = self.store.get_setting("last_dir", "")
        if last and Path(last).is_dir():
            return str(last)
        info = self.bridge.loaded_info
        if info is not None and Path(info.path).parent.is_dir():
            return str(Path(info.path).parent)
        return str(Path.home())

    def _pick_file(self) -> str:
        from PySide6.QtCore import QUrl

        from engine.storage.library import default_search_roots

        dialog = QFileDialog(
            self.picker,
            "Choose a draft model (a small model of the same family)",
            self._start_folder(),
            "GGUF models (*.gguf);;All files (*)",
        )
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)  # so the library folders show
        roots = [QUrl.fromLocalFile(str(root)) for _src, root in default_search_roots() if root.is_dir()]
        dialog.setSidebarUrls([QUrl.fromLocalFile(str(Path.home())), *roots])
        return dialog.selectedFiles()[0] if dialog.exec() and dialog.selectedFiles() else ""

    def _recent(self) -> list[str]:
        return [p for p in self.store.get_setting("recent_drafts", []) if Path(p).is_file()]

    # ------------------------------------------------------------------ choosing
    def choose(self, mode: str, path: str = "") -> None:
        if mode == CHOOSE:
            path = self._pick_file()
            if not path:
                self.picker.show_state(*self.picker.state)
                return
            mode = "model"
        if mode != "model":
            self.bridge.set_draft(mode)
            self.drafterChanged.emit(mode, "")
            self.picker.show_state(mode)
            self.picker.show_verdict("", None)
            self._publish_plan()
            return
        info = self.bridge.loaded_info
        if info is None:
            self.problem.emit("Load a model first: a draft is checked against it and gets its context.")
            self.picker.show_state(*self.picker.state)
            return
        self._checking = path
        self._verdict_for = info.path
        self.picker.show_verdict("checking…", None)
        from engine.runtime.pairing import pair_report

        settings = self._settings()
        run_in_background(  # a broken file or a runtime that will not start: the error's words
            pair_report,  # it starts a short-lived runtime child: off the GUI thread
            info.path,
            path,
            settings=settings,
            devices=self._devices(),
            margins=self._margins(),
            max_context=settings.n_ctx if settings and settings.n_ctx else None,
            parent=self,
            name="kvdeck-pair",
            on_result=lambda report: self._on_checked(path, report),
            on_error=lambda exc: self._on_checked(path, f"{Path(path).name} could not be checked: {exc}"),
        )

    def _on_checked(self, path: str, result: object) -> None:
        if path != self._checking:
            return  # the user picked something else meanwhile
        self._checking = ""
        if isinstance(result, str):
            self.picker.show_verdict("✗ not checked", False, result)
            self.picker.show_state(*self.picker.state)
            self.problem.emit(result)
            return
        text, tip = verdict_text(result)  # type: ignore[arg-type]
        self.picker.show_verdict(text, result["compatible"], tip)  # type: ignore[index]
        if not result["compatible"]:  # type: ignore[index]
            self.problem.emit(incompatible_sentence(path, result))  # type: ignore[arg-type]
            self.picker.show_state(*self.picker.state)
            return
        recent = [path] + [p for p in self._recent() if p != path]
        self.store.set_setting("recent_drafts", recent[:MAX_RECENT_DRAFTS])
        self.picker.set_items(recent[:MAX_RECENT_DRAFTS])
        self.picker.show_state("model", path)
        self.bridge.set_draft("model", path)
        self.drafterChanged.emit("model", path)

    def _on_draft_loaded(self, msg: P.DraftLoaded) -> None:
        self.picker.show_state("model", msg.path)
        self._publish_plan()

    def _on_draft_failed(self, message: str) -> None:
        self.picker.show_state(NONE)
        self.drafterChanged.emit(NONE, "")
        self.picker.show_verdict("✗ not loaded", False, message)
        self.draftPlan.emit(None)
        if message:
            self.problem.emit(message)

    def _publish_plan(self) -> None:
        """The draft's analytic plan at the target's loaded context, for the plan bars."""
        path, info, settings = self.bridge.draft_path, self.bridge.loaded_info, self._settings()
        mode = self.bridge.draft_mode
        if mode not in ("model", MTP) or (mode == "model" and not path) or info is None or settings is None:
            self.draftPlan.emit(None)
            return
        from engine.plan.analytic import analytic_plan
        from engine.plan.assistant_rules import ASSISTANT_ARCH
        from engine.plan.drafting import drafting_plan

        try:
            target = self._info(info.path)
            draft = self._info(path) if mode == "model" else None
            at = settings.replace(n_ctx=info.n_ctx)
            if draft is not None and draft.architecture != ASSISTANT_ARCH:
                plan: MemoryPlan | None = analytic_plan(
                    draft, at.replace(type_k="f16", type_v="f16"), self._devices()
                )
            else:  # the model's own MTP heads or an assistant: sized from the target's context
                tplan = analytic_plan(target, at, self._devices())
                plan = drafting_plan(target, tplan, self._devices(), draft, settings.n_gpu_layers)
        except Exception:  # the plan is a display aid; the runtime already has the draft
            plan = None
        self.draftPlan.emit(plan)

    def _info(self, path: str) -> Any:
        from engine.gguf.inspect import inspect_gguf

        if path not in self._infos:
            self._infos[path] = inspect_gguf(path)
        return self._infos[path]

    # ------------------------------------------------------------------ live numbers
    def _on_counts(self, counts: dict[str, Any]) -> None:
        self._live = counts
        self.stats.emit(speculation_text(counts, self.plain_tps))

    def live_speed(self, tokens_per_s: float) -> None:
        """The chat's live tokens/s, so the speed-up moves while a drafted reply streams."""
        if self._live and self.bridge.generating:
            self._live = {**self._live, "tokens_per_s": tokens_per_s}
            self.stats.emit(speculation_text(self._live, self.plain_tps))

    def _on_finished(self, done: P.Done) -> None:
        if not done.draft:
            if done.tokens_per_s > 0:
                self.plain_tps = done.tokens_per_s
            return
        self._live = {}
        self.stats.emit(
            speculation_text(
                {
                    "draft": done.draft,
                    "n_drafted": done.n_drafted,
                    "n_accepted": done.n_accepted,
                    "n_target_decodes": done.n_target_decodes,
                    "mean_accepted": done.mean_accepted,
                    "n_tokens": len(done.tokens),
                    "tokens_per_s": done.tokens_per_s,
                    "drafted_at": done.drafted_at,
                    "accepted_at": done.accepted_at,
                },
                self.plain_tps,
            )
        )
