"""Render resources/icons/kvdeck.svg into the icon files installers need.

Run at build time (``python installer/render_icons.py OUT_DIR``) so the SVG stays the one
source: desktop menus want PNGs (hicolor 16..512), Windows an ``.ico`` and macOS an
``.iconset`` folder that ``iconutil`` turns into ``.icns``. Qt renders with the offscreen
platform, so no display is needed.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SVG = ROOT / "resources" / "icons" / "kvdeck.svg"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)  # hicolor theme sizes
RENDER_SIZES = (*PNG_SIZES, 1024)  # 1024: macOS icon_512x512@2x
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # 256 is the largest size an .ico entry can describe


def render_png(renderer: QSvgRenderer, size: int) -> bytes:
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise SystemExit(f"cannot encode a {size}px PNG")
    return bytes(data.data())


def ico_bytes(pngs: dict[int, bytes]) -> bytes:
    """A multi-size .ico whose entries are PNGs (read by Windows Vista and later)."""
    sizes = [s for s in ICO_SIZES if s in pngs]
    header = struct.pack("<HHH", 0, 1, len(sizes))
    offset = len(header) + 16 * len(sizes)
    entries, blobs = b"", b""
    for s in sizes:
        blob = pngs[s]
        entries += struct.pack("<BBBBHHII", s % 256, s % 256, 0, 0, 1, 32, len(blob), offset + len(blobs))
        blobs += blob
    return header + entries + blobs


def main(out: Path) -> None:
    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841  (fonts need one)
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        raise SystemExit(f"cannot read {SVG}")
    pngs = {s: render_png(renderer, s) for s in RENDER_SIZES}
    iconset = out / "kvdeck.iconset"
    iconset.mkdir(parents=True, exist_ok=True)
    for s in PNG_SIZES:
        (out / f"kvdeck-{s}.png").write_bytes(pngs[s])
    for s in (16, 32, 128, 256, 512):  # iconutil's names: icon_SxS.png and icon_SxS@2x.png
        (iconset / f"icon_{s}x{s}.png").write_bytes(pngs[s])
        if s * 2 in pngs:
            (iconset / f"icon_{s}x{s}@2x.png").write_bytes(pngs[s * 2])
    (out / "kvdeck.ico").write_bytes(ico_bytes(pngs))
    print(f"icons written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build" / "icons"))
