"""One window per data folder: a second ``kvdeck MODEL.gguf`` hands the file to the first.

A file manager runs ``kvdeck FILE`` for every double-click; without this each one opened a
second window with a second runtime (and its GPU memory) on the same chat database. The first
instance holds a lock file in the data folder and listens on a local socket whose name is
derived from that folder's path; a later one finds the lock taken, connects, sends its
arguments as one JSON line and exits 0.

A crash leaves a lock and (on Unix) a socket file behind. `QLockFile` sees that the owning
process is gone and takes the lock over; the socket is removed before listening
(`QLocalServer.removeServer`), so neither can block the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from PySide6.QtCore import QByteArray, QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)
CONNECT_MS = 2000
#: How long a second instance keeps trying while the first is still starting (lock taken,
#: socket not yet listening).
WAIT_FOR_FIRST_MS = 8000


def server_name(data_dir: Path) -> str:
    """A short socket name (Unix socket paths are limited) unique to this data folder."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode("utf-8")).hexdigest()[:16]
    return f"kvdeck-{digest}"


def send_to_running(name: str, args: list[str], timeout_ms: int = CONNECT_MS) -> bool:
    """Hand ``args`` to the instance listening on ``name``; True once it has acknowledged."""
    sock = QLocalSocket()
    sock.connectToServer(name)
    if not sock.waitForConnected(timeout_ms):
        return False
    sock.write(QByteArray((json.dumps({"args": args}) + "\n").encode("utf-8")))
    sock.flush()
    while sock.bytesToWrite() > 0 and sock.waitForBytesWritten(timeout_ms):
        pass
    while not sock.canReadLine() and sock.waitForReadyRead(timeout_ms):
        pass
    ok = bytes(sock.readLine().data()).startswith(b"ok")
    sock.disconnectFromServer()
    return ok


class SingleInstance(QObject):
    """The first instance's side: the lock, the server, and ``received(args)`` per hand-over."""

    received = Signal(list)

    def __init__(self, data_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = server_name(data_dir)
        self.lock = QLockFile(str(Path(data_dir) / "window.lock"))
        self.lock.setStaleLockTime(0)  # only a dead owner makes it stale, never its age
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._on_connection)

    def claim(self) -> bool:
        """True when this process is the first (it now listens); False when another one is."""
        if not self.lock.tryLock(100):
            if self.lock.error() == QLockFile.LockError.LockFailedError:
                return False
            log.warning("no single-instance lock (%s); starting anyway", self.lock.error())
        QLocalServer.removeServer(self.name)  # a socket file left behind by a crash
        if not self.server.listen(self.name):
            log.warning("single-instance socket %s: %s", self.name, self.server.errorString())
        return True

    def hand_over(self, args: list[str]) -> bool:
        """Send ``args`` to the first instance, waiting while it starts; False if it never answers."""
        from PySide6.QtCore import QDeadlineTimer, QThread

        deadline = QDeadlineTimer(WAIT_FOR_FIRST_MS)
        while not deadline.hasExpired():
            if send_to_running(self.name, args):
                return True
            QThread.msleep(100)
        return False

    def release(self) -> None:
        self.server.close()
        self.lock.unlock()

    def _on_connection(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(sock.deleteLater)

    def _read(self, sock: QLocalSocket) -> None:
        if not sock.canReadLine():
            return
        try:
            args = json.loads(bytes(sock.readLine().data()).decode("utf-8")).get("args", [])
        except (ValueError, AttributeError):
            args = None
        sock.write(QByteArray(b"ok\n" if isinstance(args, list) else b"bad\n"))
        sock.flush()
        if isinstance(args, list):
            self.received.emit([str(a) for a in args])
