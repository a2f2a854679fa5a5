"""The message protocol between the runtime host (parent) and the llama.cpp child process.

One JSON object per line, in both directions (:mod:`engine.protocol.base`). Every message is a
frozen dataclass registered under a short ``type`` name: the core load/generate messages in
:mod:`engine.protocol.messages`, the tools' (bench, precision, pairing, drafts) in
:mod:`engine.protocol.tools`, the RPC workers' in :mod:`engine.protocol.workers`. This package exports all of them, so callers write
``from engine import protocol as P`` and ``P.LoadRequest``; modules inside the package import
from its sub-modules, never from here.
"""

from engine.protocol.base import *  # noqa: F401,F403
from engine.protocol.base import ABORT_PREFIX, MAX_LINE_BYTES, RPC_LOST_MARK, ProtocolError, decode, encode  # noqa: F401
from engine.protocol.errors import ErrorKind as ErrorKind
from engine.protocol.errors import exception_for as exception_for
from engine.protocol.messages import *  # noqa: F401,F403
from engine.protocol.tools import *  # noqa: F401,F403
from engine.protocol.workers import *  # noqa: F401,F403
