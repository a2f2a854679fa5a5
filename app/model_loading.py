"""Opening a model for the window: read it off the GUI thread, choose its settings (saved for
this file, or fitted to this machine), preflight them, load, and go back to the previous model
when llama.cpp refuses the new one.

The window (`app.main_window`) wires widgets together; this controller owns the model state
(`info`, `settings`) and what the status bar says about it (model label, context, progress).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog

from app.appinfo import seconds_since_start
from app.background import run_in_background
from app.model_text import model_summary
from engine import protocol as P
from engine.core import paths
from engine.core.build import gpu_backend
from engine.core.errors import KvDeckError
from engine.core.memory_types import FitResult, PlanSettings
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.drafter_spec import drafter_for
from engine.plan.fit import DraftSpec, default_settings, fit, pin_split, preflight
from engine.runtime.outcome import ProcessOutcome
from engine.storage.identity import model_key

log = logging.getLogger(__name__)
MAX_RECENT = 12


def check_model_path(path: str) -> str | None:
    """A one-line reason why ``path`` cannot be a model, or None. Cheap: no file is parsed."""
    p = Path(path)
    name = p.name or path
    try:
        if not p.exists():
            return f"{name} does not exist"
        if p.is_dir():
            return f"{name} is a folder, not a GGUF model file"
        if p.suffix.lower() != ".gguf":
            return f"{name} is not a GGUF model (KV Deck opens .gguf files)"
        if not os.access(p, os.R_OK):
            return f"{name} cannot be read (permission denied)"
    except (OSError, ValueError) as exc:  # a NUL byte in a dropped URL, a name too long...
        return f"{name!r} cannot be used as a model path ({exc})"
    return None


def unreadable(path: str, exc: BaseException) -> str:
    """The banner line for a file whose inspection failed: the engine's own sentence, or (a
    parser bug, a hostile file) the file's name and the exception, never a traceback."""
    if isinstance(exc, KvDeckError):
        return str(exc)
    return f"{Path(path).name} could not be read: {exc}"


class ModelLoading(QObject):
    """The window's model: ``open`` a file, ``apply`` new settings, ``restart`` a crashed runtime."""

    def __init__(self, win: Any) -> None:  # app.main_window.MainWindow
        super().__init__(win)
        self.win = win
        self.store = win.store
        self.bridge = win.bridge
        self.info: GGUFInfo | None = None
        self.settings: PlanSettings | None = None
        #: (info, settings, params) of the loaded model while another one is being loaded
        self._fallback: tuple[GGUFInfo | None, PlanSettings | None, P.LoadParams] | None = None
        #: Numbers every inspection; only the latest one may load its model (a slow read of an
        #: older choice must not replace the model the user picked after it).
        self._inspections = 0
        self._first_load_logged = False
        self.bridge.loadProgress.connect(lambda f: win.progress.setValue(int(f * 1000)))
        self.bridge.loaded.connect(self._on_loaded)
        self.bridge.loadFailed.connect(self._on_load_failed)
        self.bridge.exited.connect(self._on_runtime_exit)

    def start(self) -> None:
        """Load the last used model, or the demo model on the very first start."""
        last = self.store.get_setting("last_model")
        if last and Path(last).is_file():
            self.open(last)
            return
        demo = paths.demo_model_path()
        if demo is not None:
            self.open(str(demo))
        else:
            self.win.model_label.setText("No model — drop a .gguf file on the window")

    def choose_file(self) -> None:
        start = self.store.get_setting("last_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(
            self.win, "Open a GGUF model", start, "GGUF models (*.gguf);;All files (*)"
        )
        if path:
            try:
                self.win.chat._write(self.store.set_setting, "last_dir", str(Path(path).parent))
            except KvDeckError as exc:
                self.win.show_problem(str(exc))
            self.open(path)

    def open(self, path: str) -> None:
        problem = check_model_path(path)
        if problem:
            self.win.show_problem(problem)
            return
        self.win.model_label.setText(f"Reading {Path(path).name}…")
        self.bridge.prewarm()  # the runtime starts while the file is read and its settings fitted
        self._inspections += 1
        ticket = self._inspections
        run_in_background(  # a multi-GB file on a slow disk can take a moment
            inspect_gguf,
            path,
            parent=self,
            name="kvdeck-inspect",
            on_result=lambda info: self._on_inspected(ticket, path, info),
            on_error=lambda exc: self._on_inspected(ticket, path, unreadable(path, exc)),
        )

    def _on_inspected(self, ticket: int, path: str, result: GGUFInfo | str) -> None:
        """An inspection ended (``result`` is the model, or why it cannot be read)."""
        if ticket != self._inspections:
            log.info("%s was read after a newer choice; not loading it", Path(path).name)
            return
        if isinstance(result, str):
            self.win.show_problem(result)
            self.show_state()
            return
        info = result
        saved: dict = {}
        try:
            saved = self.store.get_model_settings(model_key(path)).get("plan", {})
        except KvDeckError:
            pass
        try:
            if saved:
                settings = PlanSettings.from_dict(saved)
            else:
                base, draft = self._drafter(info, PlanSettings())
                settings, _fit = default_settings(
                    info,
                    self.win.memory.devices()[0],
                    plan_fn=analytic_plan,
                    base=base,
                    margins=self.win.memory.cache.margins(),
                    draft=draft,
                )
                settings = settings.replace(mtp=False, n_rs_seq=0)  # the bridge adds the heads
        except (KvDeckError, TypeError, ValueError) as exc:
            self.win.show_problem(f"{Path(path).name}: {exc}")
            return
        self._load(path, settings, info)

    def apply(self, settings: PlanSettings) -> None:
        """The cache panel's "Apply and reload": remember these settings for this model."""
        info = self.info
        if info is None:
            return
        try:
            self.store.set_model_settings(model_key(info.path), {"plan": settings.to_dict()})
        except KvDeckError as exc:
            self.win.show_problem(str(exc))
        self._load(info.path, settings)

    def _load(self, path: str, settings: PlanSettings, info: GGUFInfo | None = None) -> None:
        """Preflight, then load. Nothing about the current model changes until the new one has
        passed every check; if llama.cpp then refuses it, `_on_load_failed` goes back."""
        win = self.win
        info = info or self.info
        if info is not None:
            try:
                devices, _ = win.memory.devices()
                settings = pin_split(settings, devices)  # workers: the split planned is the one loaded
                preflight(info, settings, devices, gpu_backend(), plan_fn=analytic_plan)
            except KvDeckError as exc:
                win.show_problem(f"{Path(path).name} was not loaded: {exc}")
                self.show_state()
                return
        if self.bridge.loaded_info is not None and self.bridge.last_params is not None:
            self._fallback = (self.info, self.settings, self.bridge.last_params)
        if info is not self.info and info is not None:
            win.memory.model_inspected(info, settings)
        self.info, self.settings = info, settings
        params = P.LoadParams(path, settings)
        if not win.banner.sticky:
            win.banner.hide()
        self._show_progress()
        win.model_label.setText(f"Loading {Path(path).name}…")
        self.bridge.load(params)

    def _show_progress(self) -> None:
        self.win.progress.setValue(0)
        self.win.progress.show()

    def _on_loaded(self, info: P.Loaded) -> None:
        if not self._first_load_logged:
            self._first_load_logged = True
            log.info(
                "first model ready %.2f s after process start (load %.2f s)",
                seconds_since_start(),
                info.load_s,
            )
        win = self.win
        win.progress.hide()
        self._fallback = None
        self.show_state()
        try:
            win.chat._write(self.store.set_setting, "last_model", info.path)
            recent = [p for p in self.store.get_setting("recent_models", []) if p != info.path]
            win.chat._write(self.store.set_setting, "recent_models", [info.path] + recent[: MAX_RECENT - 1])
        except KvDeckError as exc:
            win.show_problem(str(exc))
        win.chat.input.setFocus()
        if self.settings is not None:
            win.memory.model_loaded(info, self.settings)

    def show_state(self) -> None:
        """The status bar's model and context labels, from what the runtime has loaded."""
        info = self.bridge.loaded_info
        if info is None:
            self.win.model_label.setText("No model loaded")
            self.win.ctx_label.setText("")
            return
        mode = "chat" if info.chat_template else "completion (base model, no chat template)"
        where = "GPU" if info.gpu_offload and info.n_gpu_layers else "CPU"
        self.win.model_label.setText(
            f"{Path(info.path).name} · {model_summary(info.description, info.n_params)} · {mode} · {where}"
        )
        self.win.ctx_label.setText(f"context {info.n_ctx} tokens")

    def _on_load_failed(self, message: str) -> None:
        self.win.progress.hide()
        self.show_state()
        if message:
            self.win.show_problem(message)
        host = self.bridge.host
        if message and self._fallback is not None and host is not None and host.running:
            self._restore_previous()  # llama.cpp refused the new file: keep the old model

    def _restore_previous(self) -> None:
        """Load the model that was there before a failed load (its settings, its plan)."""
        info, settings, params = self._fallback  # type: ignore[misc]
        self._fallback = None
        if info is not None and settings is not None:
            self.win.memory.model_inspected(info, settings)
        self.info, self.settings = info, settings
        self._show_progress()
        self.bridge.load(params)

    def _on_runtime_exit(self, outcome: ProcessOutcome) -> None:
        if outcome.lost_workers and self.info is not None and self.settings is not None:
            # a worker went away: the reply so far is saved; reload at once without it
            self.win.machines.drop_workers(outcome.lost_workers)
            self.win.show_problem(
                f"{outcome.sentence}; the model is reloaded without it. Your conversation is saved."
            )
            self._load(self.info.path, self.settings.replace(tensor_split=()), self.info)
            return
        self.win.progress.hide()
        self.show_state()
        self.win.show_problem(
            outcome.sentence + " Your conversation is saved.", "Restart runtime", self.restart_runtime
        )

    def restart_runtime(self) -> None:
        """A fresh runtime with the last good model (not a new file that crashed it)."""
        if self._fallback is not None:
            self._restore_previous()
        elif self.bridge.last_params is not None:
            self._show_progress()
            self.bridge.reload()

    def use_larger_context(self) -> None:
        """Reload the model with the largest context that fits this machine (engine.plan.fit with
        the current settings and devices); the chat pane then answers the waiting message."""
        info, settings = self.info, self.settings
        if info is None or settings is None:
            self.win.show_problem("No model is loaded: there is no context to make larger.")
            return
        devices = self.win.memory.devices()[0]
        current = self.bridge.loaded_info.n_ctx if self.bridge.loaded_info else settings.n_ctx
        fit_settings, draft = self._drafter(info, settings)
        run_in_background(
            fit,
            info,
            fit_settings,
            devices,
            plan_fn=analytic_plan,
            margins=self.win.memory.cache.margins(),
            draft=draft,
            min_context=min(current + 1, info.n_ctx_train or current + 1),
            parent=self,
            name="kvdeck-fit-larger",
            on_result=lambda result: self._larger_fitted(info, current, result),
            on_error=lambda exc: self.win.show_problem(f"could not fit a larger context: {exc}"),
        )

    def _larger_fitted(self, info: GGUFInfo, current: int, result: FitResult) -> None:
        if info is not self.info:
            return  # another model was chosen meanwhile
        n_ctx = result.settings.n_ctx if result.fits else 0
        if n_ctx <= current:
            limit = (
                "the model's training context"
                if current >= (info.n_ctx_train or 0)
                else "the memory of this machine"
            )
            self.win.show_problem(
                f"{current:,} tokens is already the largest context that fits "
                f"({limit}): start a new chat or let older messages drop out."
            )
            return
        log.info("reloading %s with a larger context: %d -> %d", info.path, current, n_ctx)
        kept = self.settings or result.settings  # the fit's MTP settings stay the bridge's to add
        self.apply(result.settings.replace(mtp=kept.mtp, n_rs_seq=kept.n_rs_seq))

    def _drafter(self, info: GGUFInfo, settings: PlanSettings) -> tuple[PlanSettings, DraftSpec | None]:
        """The settings to fit and the drafter the draft picker has chosen, fitted together with
        the model as `kvdeck fit --mtp` / `--draft` does (engine.plan.drafter_spec)."""
        return drafter_for(info, settings, self.bridge.draft_mode, self.bridge.draft_path)
