"""``kvdeck inspect|chat ...``: the command-line twin of the GUI, Qt-free.

Every failure a user can cause ends as one line ``error: ...`` on stderr and exit status 2
(`EXIT_ERROR`). A bug (any other exception) also ends as one line, ``error: internal error
(...)`` naming the log file, with exit status 1 (`EXIT_BUG`, what an uncaught Python exception
gives); its full traceback goes to the log file (`engine.core.logfile`), never the terminal.
Ctrl-C ends with ``error: interrupted`` and 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from engine import protocol as P
from engine.chat.conversation import Reply, conversation_prompt, fit_conversation
from engine.chat.history import read_history
from engine.chat.overflow import POLICY_LABELS, OverflowPolicy
from engine.chat.template import ChatMessage
from engine.cli import bench as cli_bench
from engine.cli import hub as cli_hub
from engine.cli import memory as cli_memory
from engine.cli import precision as cli_precision
from engine.cli import rpc as cli_rpc
from engine.cli import serve as cli_serve
from engine.cli import worker as cli_worker
from engine.cli.args import model_path
from engine.core import logfile, paths
from engine.core.errors import KvDeckError
from engine.core.memory_types import Device
from engine.core.sampling import DEFAULT_PRESET, PRESETS, RANDOM_SEED, SamplingParams
from engine.protocol import LoadParams
from engine.runtime.host import RuntimeHost

EXIT_ERROR = 2  # the command or its input was refused: the line says why
EXIT_BUG = 1  # KV Deck failed: the line names the log file that holds the traceback

#: Where main() logs a bug's traceback: to the log file only (the console handler skips it).
crash_log = logging.getLogger("kvdeck.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see kvdeck {self.prog.split()[-1]} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvdeck",
        description="Run GGUF models offline and see where the memory goes. "
        "Without a command, opens the KV Deck window.",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("inspect", help="show what a GGUF file contains (metadata only, fast)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON")

    c = sub.add_parser("chat", help="answer one prompt (or continue a conversation) with a model")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("path", nargs="?")
    src.add_argument("--demo", action="store_true", help="use the bundled SmolLM2-135M demo model")
    c.add_argument("--prompt", default=None, help="the next user message (optional with --history)")
    c.add_argument(
        "--history",
        default=None,
        metavar="FILE.json",
        help="the conversation so far: an OpenAI-style message list",
    )
    c.add_argument(
        "--overflow",
        choices=[p.value for p in OverflowPolicy],
        default="rolling",
        help="when the history does not fit the context: "
        + "; ".join(f"{p.value}: {label}" for p, label in POLICY_LABELS.items()),
    )
    c.add_argument("--system", default="", help="system prompt")
    c.add_argument("--max-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=None)
    c.add_argument("--top-k", type=int, default=None)
    c.add_argument("--top-p", type=float, default=None)
    c.add_argument("--min-p", type=float, default=None)
    c.add_argument("--repeat-penalty", type=float, default=None)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    c.add_argument("--n-ctx", type=int, default=0, help="context size (0: min(training, 4096))")
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print JSON instead of streaming text")
    c.add_argument(
        "--json-schema",
        default=None,
        metavar="FILE",
        help="constrain the reply to JSON matching this JSON schema file",
    )
    spec = c.add_mutually_exclusive_group()  # speculative decoding (engine.child.speculative)
    spec.add_argument("--draft", default=None, metavar="PATH", help="a draft model that proposes tokens")
    spec.add_argument("--lookup", action="store_true", help="draft by n-gram lookup in the conversation")
    spec.add_argument("--mtp", action="store_true", help="the model drafts for itself with its MTP heads")
    c.add_argument("--draft-max", type=int, default=8, help="most tokens drafted per step (default 8)")
    # what is loaded and how, as plan/fit/serve take it (one sequence; --n-ctx is chat's own)
    cli_memory.add_plan_options(c, skip={"path", "--ctx", "--parallel", "--json"})
    cli_memory.register(sub)
    cli_precision.register(sub)
    cli_bench.register(sub)
    cli_serve.register(sub)  # the OpenAI-compatible API server (engine.serve.server)
    cli_hub.register(sub)  # kvdeck hub search|files|get (engine.hub)
    cli_worker.register(sub)  # kvdeck worker: llama.cpp's RPC server (engine.runtime.worker_process)
    return parser


def _sampling(args: argparse.Namespace) -> SamplingParams:
    base = PRESETS[args.preset].to_dict()
    for key, value in (
        ("temperature", args.temperature),
        ("top_k", args.top_k),
        ("top_p", args.top_p),
        ("min_p", args.min_p),
        ("repeat_penalty", args.repeat_penalty),
        ("seed", args.seed),
    ):
        if value is not None:
            base[key] = value
    if args.seed is None:
        base["seed"] = RANDOM_SEED
    return SamplingParams.from_dict(base)


def cmd_inspect(args: argparse.Namespace) -> int:
    from engine.gguf.inspect import inspect_gguf

    info = inspect_gguf(model_path(args)).to_json()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value)
            value = value if len(value) <= 100 else value[:97] + "..."
        print(f"{key:<{width}}  {value}")
    return 0


def _turns(args: argparse.Namespace) -> tuple[str, list[ChatMessage]]:
    """(system prompt, turns) from --history and --prompt; the last turn is the user's."""
    system: str = args.system
    turns: list[ChatMessage] = []
    if args.history:
        history_system, turns = read_history(args.history)
        system = args.system or history_system
    if args.prompt is not None:
        turns.append(ChatMessage("user", args.prompt))
    if not turns or turns[-1].role != "user":
        raise KvDeckError("nothing to answer: give --prompt, or a --history whose last message is the user's")
    return system, turns


def cmd_chat(args: argparse.Namespace) -> int:
    path = model_path(args)
    system, turns = _turns(args)
    if args.max_tokens < 1:
        raise KvDeckError(f"--max-tokens must be at least 1, not {args.max_tokens}")
    sampling = _sampling(args)
    draft_path = model_path(argparse.Namespace(path=args.draft)) if args.draft else None
    if args.draft_max < 1:
        raise KvDeckError(f"--draft-max must be at least 1, not {args.draft_max}")
    schema = _json_schema(args.json_schema) if args.json_schema else ""
    if schema and (args.draft or args.lookup):
        raise KvDeckError("--json-schema cannot be combined with speculative decoding (--draft, --lookup)")
    from engine.cli.loading import load_check
    from engine.gguf.inspect import inspect_gguf

    info = inspect_gguf(path)  # a clear error for a bad file before any process starts
    n_ctx = args.n_ctx or min(info.n_ctx_train or 4096, 4096)
    settings = cli_memory.settings_from_args(args, info).replace(n_ctx=n_ctx)
    if args.mtp:
        from engine.plan.drafting import mtp_settings

        settings = mtp_settings(info.hybrid, settings, args.draft_max)
    check = load_check(args, info, settings, inspect_gguf(draft_path) if draft_path else None)
    rpc = cli_rpc.endpoints(args)
    first = cli_rpc.devices_for(rpc)
    settings = check.placed_on(first)
    mode = "model" if draft_path else "lookup" if args.lookup else "mtp" if args.mtp else ""

    reloads: list[P.Loaded] = []

    def reload(devices: list[Device]) -> None:
        """A worker went away with the runtime: the user's options placed anew, and the draft
        model again (it went with the runtime; the reply goes on drafting)."""
        nonlocal mode
        reloads.append(host.load(LoadParams(path, check.placed_on(devices, first), n_threads=args.threads)))
        if mode == "model":
            mode = _load_draft(host, str(draft_path), args.n_gpu_layers)

    with RuntimeHost(rpc=rpc) as host:
        loaded = host.load(LoadParams(path, settings, n_threads=args.threads))
        if args.mtp and loaded.mtp != "ready":
            print(loaded.mtp, file=sys.stderr)  # one line; chat goes on without drafting
            mode = ""
        if draft_path:
            mode = _load_draft(host, draft_path, args.n_gpu_layers)
        fitted = fit_conversation(
            host.tokenize, loaded, system, turns, max_tokens=args.max_tokens, policy=args.overflow
        )
        if fitted.note and not args.json:
            print(f"[{fitted.note}]", file=sys.stderr)
        stream = None if args.json else _print_stream
        prompt = conversation_prompt(loaded, system, list(fitted.turns))

        def run(text: str, max_tokens: int, on_text: Callable[[str], None]) -> P.Done:
            def on_event(msg: P.Message) -> None:
                if isinstance(msg, P.Delta) and msg.text:
                    on_text(msg.text)

            return host.generate(
                text,
                max_tokens=max_tokens,
                sampling=sampling,
                on_event=on_event,
                draft=mode,
                draft_max=args.draft_max,
                json_schema=schema,
            )

        done, worker_note = cli_rpc.reply_surviving_workers(
            host, run, reload, prompt.text, args.max_tokens, stream
        )
    result = Reply(prompt=prompt, done=done)
    loaded = reloads[-1] if reloads else loaded  # what the reply finished on
    if args.json:
        out: dict[str, Any] = {
            "model": path,
            "text": done.text,
            "tokens": done.tokens,
            "n_prompt_tokens": done.n_prompt,
            "n_tokens": len(done.tokens),
            "tokens_per_s": round(done.tokens_per_s, 3),
            "mode": result.prompt.mode,
            "stop_reason": done.stop_reason,
            "load_s": round(loaded.load_s, 4),
            "load_mode": loaded.load_mode,  # as llama.cpp read the weights (bench's settings key)
            "first_token_s": round(done.first_token_s, 4),
            "prefill_s": round(done.prefill_s, 4),
            "n_ctx": loaded.n_ctx,
            "sampling": sampling.to_dict(),
            "n_messages": len(turns),
            "dropped_messages": len(fitted.dropped),
            "dropped_tokens": fitted.dropped_tokens,
            "overflow": args.overflow,
        }
        if worker_note:
            out["worker_lost"] = worker_note
        if done.draft:  # speculative decoding
            out.update(
                {
                    "draft": done.draft,
                    "n_drafted": done.n_drafted,
                    "n_accepted": done.n_accepted,
                    "acceptance": round(done.acceptance, 4),
                    "mean_accepted": round(done.mean_accepted, 3),
                    "n_target_decodes": done.n_target_decodes,
                    "acceptance_by_position": _by_position(done),
                }
            )
        print(json.dumps(out, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        print(
            f"[{len(done.tokens)} tokens, {done.tokens_per_s:.1f} tokens/s, "
            f"first token {done.first_token_s * 1000:.0f} ms, stop: {done.stop_reason}]",
            file=sys.stderr,
        )
        if done.draft:
            print(
                f"[{done.draft} drafting: {done.n_accepted}/{done.n_drafted} drafted tokens accepted "
                f"({done.acceptance:.0%}), {done.mean_accepted:.2f} per verify]",
                file=sys.stderr,
            )
            from engine.core.units import acceptance_by_position

            if by_position := acceptance_by_position(done.drafted_at, done.accepted_at):
                print(f"[{by_position}]", file=sys.stderr)
    return 0


def _json_schema(path: str) -> str:
    """The schema file's JSON text, refused in one sentence when it is not a JSON object."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KvDeckError(f"cannot read the JSON schema {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise KvDeckError(f"the JSON schema {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise KvDeckError(f"the JSON schema {path} must be a JSON object")
    return json.dumps(schema)


def _load_draft(host: RuntimeHost, path: str, n_gpu_layers: int) -> str:
    """Load the draft; a Gemma 4 assistant that does not fit the target is one line on stderr and
    the chat goes on without drafting (any other refusal still stops the command)."""
    from engine.core.errors import InvalidSettings
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.assistant_rules import ASSISTANT_ARCH

    try:
        host.load_draft(path, n_gpu_layers=n_gpu_layers)
    except InvalidSettings as exc:
        if inspect_gguf(path).architecture != ASSISTANT_ARCH:
            raise
        print(str(exc), file=sys.stderr)
        return ""
    return "model"


def _by_position(done: Any) -> list[float | None]:
    """Acceptance of the 1st, 2nd, ... drafted token of a step (None where none was drafted)."""
    return [round(a / d, 4) if d else None for d, a in zip(done.drafted_at, done.accepted_at)]


def _print_stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


COMMANDS = {
    "inspect": cmd_inspect,
    "chat": cmd_chat,
    "plan": cli_memory.cmd_plan,
    "fit": cli_memory.cmd_fit,
    "pair": cli_memory.cmd_pair,
}
COMMANDS["precision"] = cli_precision.cmd_precision
COMMANDS["bench"] = cli_bench.cmd_bench
COMMANDS["serve"] = cli_serve.cmd_serve
COMMANDS["hub"] = cli_hub.cmd_hub
COMMANDS["worker"] = cli_worker.cmd_worker


def _setup_logging() -> Path | None:
    """Errors to the terminal, everything from INFO to the log file; the log file, or None.

    Like basicConfig, only when nothing is configured yet (a host program's logging stays), and
    minus what the one-line ``error: ...`` already says: llama.cpp's log, the runtime's abort
    line and a bug's traceback (`crash_log`) go to the file alone."""
    root = logging.getLogger()
    if root.handlers:
        return None
    console = logging.StreamHandler()
    console.setLevel(logging.ERROR)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.addFilter(lambda r: not r.name.startswith(("kvdeck.llama", "kvdeck.runtime", crash_log.name)))
    root.addHandler(console)
    root.setLevel(logging.INFO)
    logging.raiseExceptions = False  # a log file that fails mid-run never adds lines to the terminal
    try:
        root.addHandler(logfile.file_handler())
    except (OSError, KvDeckError):  # no data folder, read-only: the terminal line still comes
        return None
    return paths.log_path()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    log_file = _setup_logging()
    try:
        return COMMANDS[args.command](args)
    except KvDeckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line here, the traceback in the log file
        command = " ".join(sys.argv[1:] if argv is None else argv)
        crash_log.error("internal error in: kvdeck %s", command, exc_info=True)
        where = f"; the traceback is in {log_file}" if log_file else ""
        summary = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever exc says
        print(f"error: internal error ({summary}){where}", file=sys.stderr)
        return EXIT_BUG
