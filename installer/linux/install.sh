#!/bin/sh
# Install KV Deck for this user, from the unpacked kvdeck folder (no root needed):
#   ~/.local/lib/kvdeck/                the program (this folder, copied)
#   ~/.local/bin/kvdeck                 a link to it, for the terminal
#   ~/.local/share/applications/kvdeck.desktop, icons, and the .gguf file type (application/x-gguf),
#   registered with xdg-mime so double-clicking a model opens it in KV Deck.
# ./install.sh --uninstall removes all of that again; chats and settings in ~/.local/share/kvdeck stay.
# KVDECK_PREFIX and KVDECK_BIN_DIR move the program and the link elsewhere.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd -P)
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
PREFIX=${KVDECK_PREFIX:-$HOME/.local/lib/kvdeck}
BIN=${KVDECK_BIN_DIR:-$HOME/.local/bin}
SIZES="16 24 32 48 64 128 256 512"
MIME_XML=share/mime/packages/kvdeck-gguf.xml

have() { command -v "$1" >/dev/null 2>&1; }
is_bundle() { [ -x "$1/kvdeck" ] && [ -d "$1/_internal" ]; }

refresh() {  # the caches menus and file managers read; each tool is optional
    if have update-desktop-database; then update-desktop-database -q "$DATA/applications" || true; fi
    if have update-mime-database; then update-mime-database "$DATA/mime" >/dev/null 2>&1 || true; fi
    if have gtk-update-icon-cache; then gtk-update-icon-cache -q -t -f "$DATA/icons/hicolor" || true; fi
}

uninstall() {
    if have xdg-mime && [ -f "$PREFIX/$MIME_XML" ]; then
        xdg-mime uninstall --mode user "$PREFIX/$MIME_XML" || true
    fi
    rm -f "$DATA/mime/packages/kvdeck-gguf.xml" "$DATA/applications/kvdeck.desktop"
    apps="${XDG_CONFIG_HOME:-$HOME/.config}/mimeapps.list"  # xdg-mime can set a default, not unset it
    if [ -f "$apps" ]; then sed -i '/=kvdeck\.desktop;*$/d' "$apps"; fi
    for s in $SIZES; do
        rm -f "$DATA/icons/hicolor/${s}x$s/apps/kvdeck.png" "$DATA/icons/hicolor/${s}x$s/mimetypes/application-x-gguf.png"
    done
    if [ -L "$BIN/kvdeck" ]; then rm -f "$BIN/kvdeck"; fi
    if is_bundle "$PREFIX"; then rm -rf "$PREFIX"; fi  # never rm -rf a folder that is not ours
    refresh
    echo "KV Deck removed; your chats and settings in $DATA/kvdeck are kept."
}

install_files() {
    is_bundle "$HERE" || { echo "error: run install.sh from inside the unpacked kvdeck folder" >&2; exit 2; }
    if [ "$HERE" != "$(cd "$PREFIX" 2>/dev/null && pwd -P)" ]; then  # not re-running from the installed copy
        if [ -e "$PREFIX" ] && ! is_bundle "$PREFIX"; then
            echo "error: $PREFIX exists and is not a KV Deck folder; set KVDECK_PREFIX" >&2; exit 2
        fi
        mkdir -p "$(dirname "$PREFIX")"
        rm -rf "$PREFIX.new"
        cp -a "$HERE" "$PREFIX.new"  # copy first, swap after: a failed copy leaves the old install working
        rm -rf "$PREFIX"
        mv "$PREFIX.new" "$PREFIX"
    fi
    mkdir -p "$BIN" "$DATA/applications" "$DATA/mime/packages"
    ln -sfn "$PREFIX/kvdeck" "$BIN/kvdeck"
    sed "s|^Exec=.*|Exec=\"$PREFIX/kvdeck\" %f|" "$PREFIX/share/applications/kvdeck.desktop" \
        > "$DATA/applications/kvdeck.desktop"
    for s in $SIZES; do
        icon="$PREFIX/share/icons/hicolor/${s}x$s/apps/kvdeck.png"
        for kind in apps/kvdeck mimetypes/application-x-gguf; do
            mkdir -p "$DATA/icons/hicolor/${s}x$s/${kind%/*}"
            cp "$icon" "$DATA/icons/hicolor/${s}x$s/$kind.png"
        done
    done
    if have xdg-mime; then
        xdg-mime install --mode user "$PREFIX/$MIME_XML"
        xdg-mime default kvdeck.desktop application/x-gguf
    else
        cp "$PREFIX/$MIME_XML" "$DATA/mime/packages/"
        echo "note: xdg-mime (package xdg-utils) is missing: .gguf files are known now, but choose"
        echo "      KV Deck once under 'Open With' to make it their default."
    fi
    refresh
    echo "KV Deck installed in $PREFIX: start it from the applications menu, or run kvdeck."
    case ":$PATH:" in *":$BIN:"*) ;; *) echo "note: $BIN is not on your PATH." ;; esac
}

case "${1:-}" in
    --uninstall) uninstall ;;
    "") install_files ;;
    *) echo "usage: $0 [--uninstall]" >&2; exit 2 ;;
esac
