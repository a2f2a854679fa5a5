"""Can the window open here? Checked before Qt starts, because Qt's answer is an abort.

Without a display, or with the X11 (xcb) platform plugin missing a system library, creating
the QApplication ends the process in Qt's `qFatal` (exit 134, "could not load the Qt platform
plugin xcb"), after which nothing can be said to the user. This module finds the same problems
first, without importing Qt's GUI modules, and words them as one line naming what is missing and
the package that provides it. Linux only: on Windows and macOS the platform plugin always loads.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: Library (as ldd names it) -> (Debian/Ubuntu package, Fedora package).
XCB_PACKAGES = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
}
HEADLESS_HINT = "set QT_QPA_PLATFORM=offscreen for headless use; the command line needs no display"


def _qt_dir() -> Path | None:
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "Qt"


def missing_libraries(binaries: list[Path]) -> list[str]:
    """Shared libraries `ldd` cannot find for these binaries (empty when ldd is absent)."""
    ldd = shutil.which("ldd")
    missing: list[str] = []
    for binary in binaries:
        if ldd is None or not binary.is_file():
            continue
        try:
            out = subprocess.run([ldd, str(binary)], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            name, _, where = line.strip().partition(" => ")
            if where.strip() == "not found" and name not in missing:
                missing.append(name)
    return missing


def _platform() -> str:
    """The platform plugin Qt will pick: QT_QPA_PLATFORM, else Wayland or X11 by session."""
    chosen = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0].split(";")[0].strip()
    if chosen:
        return chosen
    if os.environ.get("WAYLAND_DISPLAY"):
        return "wayland"
    return "xcb" if os.environ.get("DISPLAY") else ""


def display_problem() -> str | None:
    """One line saying why the window cannot open here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return None
    platform = _platform()
    if not platform:
        return (
            "no display found (neither DISPLAY nor WAYLAND_DISPLAY is set): start KV Deck "
            f"from a desktop session, or {HEADLESS_HINT}"
        )
    if platform != "xcb":
        return None
    qt = _qt_dir()
    if qt is None:
        return None
    missing = missing_libraries(
        [qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6"]
    )
    if ctypes.util.find_library("xcb-cursor") is None:  # dlopen'ed by Qt >= 6.5, not in ldd
        missing.append("libxcb-cursor.so.0")
    if not missing:
        return _x_server_problem(os.environ.get("DISPLAY", ""))
    debian = sorted({XCB_PACKAGES.get(m, (m, m))[0] for m in missing})
    fedora = sorted({XCB_PACKAGES.get(m, (m, m))[1] for m in missing})
    return (
        f"the window needs system libraries that are missing ({', '.join(missing)}): install "
        f"them (Debian/Ubuntu: apt install {' '.join(debian)}; Fedora: dnf install "
        f"{' '.join(fedora)}), or {HEADLESS_HINT}"
    )


def _x_server_problem(display: str) -> str | None:
    """A local display (":1") whose X server socket is absent cannot be connected to."""
    host, _, number = display.partition(":")
    number = number.split(".")[0]
    if host or not number.isdigit() or not Path("/tmp/.X11-unix").is_dir():
        return None  # remote or unusual displays: let Qt try
    if Path(f"/tmp/.X11-unix/X{number}").exists():
        return None
    return f"cannot connect to the display {display} (no X server is running there); {HEADLESS_HINT}"
