"""The one QObject between the GUI and the runtime host.

The bridge's state (which request is loading or generating, what is loaded) has one owner: the
GUI thread. The host calls back on its reader thread, and that callback does nothing but emit a
private signal with a queued connection; the event is handled on the GUI thread, after the
request that it answers has returned and stored its id. (Handling it on the reader thread
raced with that store: an error answering at once was dropped and the window stayed busy.)
Requests are small pipe writes and return at once, so the GUI thread never waits for the child.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from PySide6.QtCore import QObject, Qt, Signal

from engine import protocol as P
from engine.core.errors import KvDeckError
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from engine.runtime.host import RuntimeHost
from engine.runtime.outcome import Exited, ProcessOutcome

log = logging.getLogger(__name__)


def _mtp_settings(params: P.LoadParams) -> PlanSettings:
    """The load's settings with the model's own MTP heads (and state snapshots for a hybrid)."""
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.drafting import mtp_settings

    try:
        hybrid = inspect_gguf(params.path).hybrid
    except KvDeckError:
        hybrid = False  # the load itself will say what is wrong with the file
    return mtp_settings(hybrid, params.settings)


class RuntimeBridge(QObject):
    loadProgress = Signal(float)
    loaded = Signal(object)  # P.Loaded
    loadFailed = Signal(str)
    started = Signal(object)  # P.Started
    delta = Signal(str, int)  # text, number of tokens
    kvUsed = Signal(int, int)  # tokens in the KV cache, context size
    kvSlots = Signal(list, int)  # tokens per parallel sequence, capacity of each (engine.child.batch)
    finished = Signal(object)  # P.Done
    generationFailed = Signal(str)
    exited = Signal(object)  # ProcessOutcome (unexpected ends only)
    busyChanged = Signal(bool)
    draftLoaded = Signal(object)  # P.DraftLoaded (speculative decoding)
    draftFailed = Signal(str)
    speculation = Signal(object)  # dict: running counts of a drafted reply (engine.child.speculative)
    _event = Signal(object, object)  # (host, message), emitted on the host's reader thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._host: RuntimeHost | None = None
        self._load_id = 0
        self._gen_id = 0
        self.loaded_info: P.Loaded | None = None
        self.last_params: P.LoadParams | None = None
        self.last_outcome: ProcessOutcome | None = None
        #: The child's latest per-sequence occupancy, for the API server's /v1/kvdeck/memory.
        self.last_slots: P.Slots | None = None
        #: Speculative decoding: "" none, "lookup", "mtp" (the model's own MTP heads, loaded with
        #: it), or "model" with ``draft_path`` (a draft model or Gemma 4 assistant, reloaded after
        #: every target load, since its context is the target's).
        self.draft_mode = ""
        self.draft_path = ""
        self.draft_info: P.DraftLoaded | None = None
        self._draft_id = 0
        self._spec_tokens = 0
        self._event.connect(self._on_host_event, Qt.ConnectionType.QueuedConnection)
        #: llama.cpp RPC workers the runtime registers (app.machines); a change takes effect at
        #: the next load, in a new runtime (a registration cannot be undone in a process).
        self.workers: tuple[str, ...] = ()

    # ------------------------------------------------------------------ state
    @property
    def loading(self) -> bool:
        return self._load_id != 0

    @property
    def generating(self) -> bool:
        return self._gen_id != 0

    @property
    def host(self) -> RuntimeHost | None:
        return self._host

    def _ensure_host(self) -> RuntimeHost:
        if self._host is None or not self._host.running:
            holder: list[RuntimeHost] = []
            host = RuntimeHost(on_event=lambda msg: self._event.emit(holder[0], msg), rpc=self.workers)
            holder.append(host)
            self._host = host
            host.start()
        return self._host

    def prewarm(self) -> None:
        """Start the runtime process now, before any request: its interpreter and llama.cpp's
        libraries load while the window reads the model file and fits its settings, which on
        two cores takes a few hundred milliseconds off the time to the first reply. A failure
        to start is left for `load` to report."""
        try:
            self._ensure_host()
        except KvDeckError:
            pass

    # ------------------------------------------------------------------ requests
    def load(self, params: P.LoadParams) -> None:
        """Load a model, replacing the current one (cancelling whatever runs)."""
        if self._host is not None and self._host.running and (self.loading or self.generating):
            self._host.cancel(0)
        if self.draft_mode == "mtp" and not params.settings.mtp:  # the heads load with the model
            params = replace(params, settings=_mtp_settings(params))
        self.last_params = params
        self.loaded_info = None
        if self._host is not None and self._host.running and self._host.rpc != self.workers:
            self._host.stop()  # other workers: a new runtime registers them
        try:
            self._load_id = self._ensure_host().submit_load(params)
        except KvDeckError as exc:
            self._load_id = 0
            self.loadFailed.emit(str(exc))
            return
        self.busyChanged.emit(True)
        self._submit_draft()  # queued behind the load in the child

    def reload(self) -> None:
        """Start a fresh runtime with the last model (after a crash, or when asked)."""
        if self.last_params is not None:
            self.load(replace(self.last_params))

    def generate(self, prompt: str, sampling: SamplingParams, max_tokens: int) -> bool:
        if self.loaded_info is None or self._host is None or not self._host.running:
            self.generationFailed.emit("no model is loaded")
            return False
        try:
            mtp = self.draft_mode == "mtp" and self.loaded_info.mtp == "ready"
            draft = self.draft_mode if self.draft_mode == "lookup" or self.draft_info or mtp else ""
            self._gen_id = self._host.submit_generate(
                prompt, max_tokens=max_tokens, sampling=sampling, draft=draft
            )
            self._spec_tokens = 0
        except KvDeckError as exc:
            self.generationFailed.emit(str(exc))
            return False
        self.busyChanged.emit(True)
        return True

    def set_draft(self, mode: str, path: str = "") -> None:
        """Pick the drafting mode; "model" loads ``path`` beside the target (already checked by
        the caller; the child checks again and refuses with reasons)."""
        had_model = self.draft_info is not None or self._draft_id
        self.draft_mode, self.draft_path = mode, path if mode == "model" else ""
        self.draft_info = None
        if mode == "mtp" and self.last_params is not None and not self.last_params.settings.mtp:
            self.load(self.last_params)  # load() adds the MTP heads: they are part of the model load
        if mode == "model":
            self._submit_draft()
        elif had_model and self._host is not None and self._host.running:
            self._draft_id = 0
            try:
                self._host.submit_unload_draft()
            except KvDeckError:
                pass

    def _submit_draft(self) -> None:
        if self.draft_mode != "model" or not self.draft_path or self._host is None:
            return
        self.draft_info = None
        try:
            self._draft_id = self._host.submit_load_draft(self.draft_path)
        except KvDeckError as exc:
            self._draft_id = 0
            self.draftFailed.emit(str(exc))

    def _on_draft_event(self, msg: object) -> bool:
        """Draft replies and the running counts of drafted replies; True when consumed."""
        req_id = getattr(msg, "id", None)
        if isinstance(msg, P.DraftLoaded) and req_id == self._draft_id:
            self._draft_id, self.draft_info = 0, msg
            self.draftLoaded.emit(msg)
            return True
        if isinstance(msg, P.ErrorEvent) and self._draft_id and req_id == self._draft_id:
            self._draft_id, self.draft_mode, self.draft_path = 0, "", ""
            self.draftFailed.emit(msg.message)
            return True
        if isinstance(msg, P.Delta) and req_id == self._gen_id and (msg.n_drafted or self._spec_tokens):
            self._spec_tokens += len(msg.tokens)
            self.speculation.emit(
                {
                    "draft": self.draft_mode,
                    "n_drafted": msg.n_drafted,
                    "n_accepted": msg.n_accepted,
                    "n_tokens": self._spec_tokens,
                }
            )
        return isinstance(msg, (P.DraftLoaded, P.DraftUnloaded))

    def cancel(self) -> None:
        if self._host is not None and (self._gen_id or self._load_id):
            self._host.cancel(self._gen_id or self._load_id)

    def shutdown(self) -> None:
        host, self._host = self._host, None
        self._load_id = self._gen_id = 0
        if host is not None:
            host.stop(timeout=3.0)

    def kill_runtime(self) -> None:
        if self._host is not None:
            self._host.kill()

    # ------------------------------------------------------------------ events (GUI thread)
    def _on_host_event(self, host: RuntimeHost, msg: object) -> None:
        if host is self._host:  # late events of a replaced or shut down runtime are dropped
            self._on_event(msg)

    def _on_event(self, msg: object) -> None:
        if isinstance(msg, Exited):
            self._on_exit(msg.outcome)
            return
        if self._on_draft_event(msg):
            return
        req_id = getattr(msg, "id", None)
        if isinstance(msg, P.Progress) and req_id == self._load_id:
            self.loadProgress.emit(msg.fraction)
        elif isinstance(msg, P.Loaded) and req_id == self._load_id:
            self._load_id = 0
            self.loaded_info, self.last_slots = msg, None
            self.loaded.emit(msg)
            self.busyChanged.emit(False)
            if self.draft_mode == "mtp" and msg.mtp != "ready":  # one line; chat goes on plainly
                self.draft_mode = ""
                self.draftFailed.emit(msg.mtp or "this model cannot draft for itself")
        elif isinstance(msg, P.Started) and req_id == self._gen_id:
            self.started.emit(msg)
        elif isinstance(msg, P.Delta) and req_id == self._gen_id:
            self.delta.emit(msg.text, len(msg.tokens))
            if self.loaded_info is not None:
                self.kvUsed.emit(msg.n_past, self.loaded_info.n_ctx_seq)
        elif isinstance(msg, P.Done) and req_id == self._gen_id:
            self._gen_id = 0
            self.finished.emit(msg)
            self.busyChanged.emit(False)
        elif isinstance(msg, P.Slots):
            self.last_slots = msg
            self.kvSlots.emit(list(msg.n_past), msg.n_ctx_seq)
        elif isinstance(msg, P.ErrorEvent):
            if req_id == self._load_id:
                self._load_id = 0
                self.loadFailed.emit(
                    "" if P.ErrorKind.parse(msg.kind) is P.ErrorKind.CANCELLED else msg.message
                )
                self.busyChanged.emit(False)
            elif req_id == self._gen_id:
                self._gen_id = 0
                self.generationFailed.emit(
                    "" if P.ErrorKind.parse(msg.kind) is P.ErrorKind.CANCELLED else msg.message
                )
                self.busyChanged.emit(False)

    def _on_exit(self, outcome: ProcessOutcome) -> None:
        was_loading, was_generating = self._load_id, self._gen_id
        self._load_id = self._gen_id = 0
        self.draft_info, self._draft_id = None, 0  # a restart loads the draft again (load())
        self.loaded_info = None
        if outcome.expected:
            return
        self.last_outcome = outcome
        if was_loading:
            self.loadFailed.emit(outcome.sentence)
        if was_generating:
            self.generationFailed.emit(outcome.sentence)
        self.exited.emit(outcome)
        self.busyChanged.emit(False)
