"""``kvdeck hub search|files|get``: find GGUFs on the Hugging Face Hub, see whether each one
fits this machine before downloading it, and download it resumably into the HF cache."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from engine.core.errors import KvDeckError
from engine.core.memory_types import MiB


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / MiB:.1f} MiB"


def cmd_search(args: argparse.Namespace) -> int:
    from engine.hub.client import search

    hits = search(args.query, limit=args.limit)
    if args.json:
        print(json.dumps([h.to_json() for h in hits], indent=2))
        return 0
    if not hits:
        print(f"no GGUF repositories match {args.query!r}")
    width = max((len(h.repo) for h in hits), default=10)
    for h in hits:
        print(
            f"{h.repo:<{width}}  {h.downloads:>10,} downloads  {h.likes:>6,} likes  "
            f"{h.updated or '?':<10}{'  gated' if h.gated else ''}"
        )
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    from engine.hub.client import list_files
    from engine.hub.verdict import Candidate, judge, sort_key

    listing = list_files(args.repo, args.revision)
    if args.no_verdict:
        cands = [Candidate(m, None, None, 0, 0.0) for m in listing.models]
        cands.sort(key=lambda c: (c.model.role != "model", c.model.quant, c.model.name))
    else:
        budget = args.budget_mib * MiB if args.budget_mib is not None else None
        cands = judge(list(listing.models), args.revision, max_context=args.ctx, budget_bytes=budget)
        cands.sort(key=sort_key)
    if args.json:
        print(json.dumps({**listing.to_json(), "models": [c.to_json() for c in cands]}, indent=2))
        return 0
    if not cands:
        print(f"{args.repo} has no GGUF files")
    for c in cands:
        m = c.model
        parts = f" ({len(m.files)} parts)" if m.n_parts > 1 else ""
        role = "" if m.role == "model" else f" [{m.role}]"
        head = f"{m.quant:<9} {_size(m.size):>11}  {m.name}{parts}{role}"
        print(head)
        if c.verdict is not None:
            print(f"          {c.verdict.text}")
        elif c.error:
            print(f"          {c.error}")
    return 0


class _Bar:
    """A progress line on stderr: redrawn in place on a terminal, every 10 % otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.step = -1

    def __call__(self, p: Any) -> None:
        if p.state in ("checking", "verifying"):
            if self.tty or p.state == "verifying":
                self._line(f"{p.state} {p.label}", end="\n" if not self.tty else "")
            return
        if p.state != "downloading" or not p.total:
            return
        frac = min(1.0, p.done / p.total)
        if not self.tty:
            step = int(frac * 10)
            if step == self.step:
                return
            self.step = step
        bar = "#" * int(frac * 30)
        eta = "?" if p.eta_s is None else time.strftime("%H:%M:%S", time.gmtime(p.eta_s))
        self._line(
            f"[{bar:<30}] {frac:6.1%}  {_size(p.done)} of {_size(p.total)}  "
            f"{p.speed / MiB:.1f} MiB/s  {eta} left",
            end="" if self.tty else "\n",
        )

    def _line(self, text: str, end: str) -> None:
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + text + end)
        sys.stderr.flush()


def cmd_get(args: argparse.Namespace) -> int:
    from engine.hub.client import list_files
    from engine.hub.download import download_model
    from engine.hub.names import find_model

    listing = list_files(args.repo, args.revision)
    model = find_model(list(listing.models), args.file)
    if model is None:
        raise KvDeckError(f"{args.repo} has no GGUF model {args.file!r} (see kvdeck hub files {args.repo})")
    bar = _Bar()
    try:
        paths = download_model(model, revision=args.revision, on_progress=bar)
    finally:
        if bar.tty:
            sys.stderr.write("\n")
    if args.json:
        print(json.dumps({"repo": model.repo, "model": model.name, "paths": [str(p) for p in paths]}))
    else:
        print(paths[0])
    return 0


def cmd_hub(args: argparse.Namespace) -> int:
    return {"search": cmd_search, "files": cmd_files, "get": cmd_get}[args.hub_command](args)


def register(sub: Any) -> None:
    """Add ``hub`` with its ``search``, ``files`` and ``get`` commands."""
    hub = sub.add_parser("hub", help="find and download GGUF models on the Hugging Face Hub")
    hs = hub.add_subparsers(dest="hub_command", required=True, parser_class=type(hub))
    s = hs.add_parser("search", help="GGUF repositories matching QUERY, most downloaded first")
    s.add_argument("query")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true")
    f = hs.add_parser(
        "files",
        help="a repository's GGUF models with a memory verdict for this machine (reads only their headers)",
    )
    f.add_argument("repo")
    f.add_argument("--revision", default="main")
    f.add_argument("--ctx", type=int, default=None, help="largest context to consider")
    f.add_argument("--budget-mib", type=int, default=None, help="memory budget per GPU (or RAM)")
    f.add_argument("--no-verdict", action="store_true", help="list only, read no headers")
    f.add_argument("--json", action="store_true")
    g = hs.add_parser(
        "get", help="download a model (all its parts) into the Hugging Face cache; resumes, checks the sha256"
    )
    g.add_argument("repo")
    g.add_argument("file", help="a file name, or a quantization such as Q4_K_M")
    g.add_argument("--revision", default="main")
    g.add_argument("--json", action="store_true")
