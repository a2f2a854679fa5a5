"""The ``kvdeck`` executable: GUI without a command, the engine's CLI with one.

Qt is imported only when the window is wanted, so ``kvdeck inspect``/``chat`` start fast and
run on machines without a display. A bundled build also starts the runtime child through this
entry point (``--runtime-child``), because a frozen app has no ``python -m``.
"""
from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--runtime-child"]:
        from engine.child import main as child_main

        return child_main()
    from engine.cli import COMMANDS, main as cli_main

    if args and (args[0] in COMMANDS or args[0] in ("-h", "--help")):
        return cli_main(args)
    from app.gui import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
