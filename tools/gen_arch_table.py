#!/usr/bin/env python3
"""Regenerate engine/gguf/arch_table.py from llama.cpp's loader source.

Why: llama.cpp reads, per architecture, only the hparam keys that architecture's loader asks for
(`src/models/<arch>.cpp: load_arch_hparams`, plus the common keys of
`src/llama-model.cpp: llama_model_base::load_hparams`) and ignores every other key. Files from some
writers carry every known key, mostly zero; the planner must ignore the same keys llama.cpp
ignores. Hand-kept lists drift, so this script derives the table from the vendored source:

- `src/llama-arch.cpp`: LLM_ARCH_NAMES (enum -> "name") and LLM_KV_NAMES (enum -> "%s.key").
- `src/llama-model.cpp: llama_model_mapping`: which loader class each architecture gets.
- `src/models/models.h`: class inheritance; a class without its own `load_arch_hparams`
  reuses its parent's (mistral4 -> deepseek2, llama_embed -> llama, ...).
- `src/llama-vocab.cpp`: the few `%s.` keys the vocabulary loader reads (vocab_size).
- each `load_arch_tensors` body (memory plan): whether a tied output (`token_embd` with
  TENSOR_DUPLICATED) is created before `tok_embd` itself, and the TENSOR_READ_LAZY tensors.
- each `load_arch_hparams` body: every `ml.get_key / get_key_or_arr / get_arr / get_arr_n`,
  calls of `llama_model_base` helpers (`load_swa_pattern`) and of file-local static helpers
  that take an `llm_kv` (qwen4exp's `qwen4exp_require_arr_len`).

Each read is recorded as (how, required, conditional, default): `how` is the loader call,
`required` its last argument (true when omitted), `conditional` whether the read sits inside an
if/else/loop/switch or behind `||`/`&&` (llama.cpp may skip it), `default` the C++ expression
the target holds when the key is absent (an assignment earlier in the same function, else the
member initializer in src/llama-hparams.h), or None when unknown.

Usage: python tools/gen_arch_table.py [LLAMA_CPP_ROOT] [--check]
LLAMA_CPP_ROOT defaults to $KVDECK_LLAMA_SRC, then .venv/src/llama_cpp_python-0.3.36/vendor/
llama.cpp, then /tmp/llsrc/…  Fetch it with `make llama-src`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: tools.cpp_source beside it
from tools.cpp_source import block as _block  # noqa: E402
from tools.cpp_source import functions as _functions  # noqa: E402
from tools.cpp_source import split_args as _split_args  # noqa: E402
from tools.cpp_source import strip_comments as _strip_comments  # noqa: E402

OUT = ROOT / "engine" / "gguf" / "arch_table.py"
SDIST = "llama_cpp_python-0.3.36"
CANDIDATES = (
    ROOT / ".venv" / "src" / SDIST / "vendor" / "llama.cpp",
    Path("/tmp/llsrc") / SDIST / "vendor" / "llama.cpp",
)
COMMIT = "0c1e570"


class Read(NamedTuple):
    key: str  # GGUF key format, "%s." = the architecture name
    how: str  # get_key | get_key_or_arr | get_arr | get_arr_n
    required: bool
    conditional: bool
    default: str | None


def find_source(argv: list[str]) -> Path | None:
    """The llama.cpp root given on the command line, in the environment, or a known place."""
    given = [a for a in argv if not a.startswith("--")]
    paths = [Path(given[0])] if given else []
    if os.environ.get("KVDECK_LLAMA_SRC"):
        paths.append(Path(os.environ["KVDECK_LLAMA_SRC"]))
    paths += CANDIDATES
    return next((p for p in paths if (p / "src" / "models" / "models.h").is_file()), None)


def _is_conditional(body: str, pos: int) -> bool:
    """Whether the statement at `pos` runs only sometimes: inside a nested block, or after
    `||`/`&&`/`?` in its own statement."""
    depth = 0
    stmt_start = max(body.rfind(";", 0, pos), body.rfind("{", 0, pos), body.rfind("}", 0, pos))
    if re.search(r"\|\||&&|\?", body[stmt_start + 1 : pos]):
        return True
    head = body[stmt_start + 1 : pos]
    if re.search(r"\b(if|while|for|switch)\s*\(", head) and "ml." not in head.split("(")[0]:
        # `if (ml.get_key(...))` runs the read unconditionally; `if (x) ml.get_key(...)` not.
        cond = re.search(r"\b(?:if|while|for|switch)\s*\(", head)
        if cond and _block(body, stmt_start + 1 + cond.end() - 1) <= pos:
            return True
    for j in range(pos - 1, -1, -1):
        c = body[j]
        if c == "}":
            depth += 1
        elif c == "{":
            if depth == 0:
                return True  # an enclosing block inside the function body
            depth -= 1
    return False


_CALL = re.compile(r"\bml\.(get_key_or_arr|get_key|get_arr_n|get_arr)\s*\(")


def _reads(
    body: str,
    kv_names: dict[str, str],
    hp_defaults: dict[str, str],
    helpers: dict[str, list[Read]],
    local: dict[str, tuple[str, bool]],
) -> list[Read]:
    """Every key read in a function body, in source order."""
    out: list[Read] = []
    for m in _CALL.finditer(body):
        args = _split_args(body[m.end() : _block(body, m.end() - 1) - 1])
        kid = re.sub(r"^llm_kv\((.*)\)$", r"\1", args[0]) if args else ""
        if kid not in kv_names:
            continue
        n_req = {"get_key_or_arr": 3}.get(m.group(1), 2)
        required = not (len(args) > n_req and args[n_req] == "false")
        target = args[1] if len(args) > 1 else ""
        out.append(
            Read(
                kv_names[kid],
                m.group(1),
                required,
                _is_conditional(body, m.start()),
                _default(body[: m.start()], target, hp_defaults),
            )
        )
    for name, reads in helpers.items():  # llama_model_base helpers: load_swa_pattern(ml, …)
        for m in re.finditer(r"\b" + name + r"\s*\(\s*ml\b", body):
            cond = _is_conditional(body, m.start())
            out += [r._replace(conditional=r.conditional or cond) for r in reads]
    for name, (how, required) in local.items():  # static helper(ml, LLM_KV_X, …)
        for m in re.finditer(r"\b" + name + r"\s*\(\s*ml\s*,\s*(LLM_KV_\w+)", body):
            out.append(Read(kv_names[m.group(1)], how, required, _is_conditional(body, m.start()), None))
    return out


def _default(before: str, target: str, hp_defaults: dict[str, str]) -> str | None:
    """The value `target` holds before the read: the last plain assignment in the function,
    else the member initializer in llama-hparams.h; None for locals or unknown."""
    if not target:
        return None
    hits = re.findall(r"(?:^|[;{}])\s*" + re.escape(target) + r"\s*=\s*([^;=][^;]*);", before)
    if hits:
        return " ".join(hits[-1].split())
    fill = re.findall(r"std::fill\(\s*" + re.escape(target) + r"\.begin\(\)\s*,[^,]*,\s*([^;]+)\);", before)
    if fill:
        return " ".join(fill[-1].split())
    if target.startswith("hparams."):
        member = target[len("hparams.") :]
        return hp_defaults.get(member)
    local = re.findall(r"\b\w+\s+" + re.escape(target) + r"\s*=\s*([^;]+);", before)
    return " ".join(local[-1].split()) if local else None


def parse(src: Path) -> dict[str, object]:
    """Everything the generated module holds, as plain data."""

    def read(rel: str) -> str:
        return _strip_comments((src / rel).read_text(encoding="utf-8"))

    arch_cpp = read("src/llama-arch.cpp")
    arch_names = dict(re.findall(r"\{\s*(LLM_ARCH_\w+)\s*,\s*\"([^\"]+)\"\s*\}", arch_cpp))
    kv_names = dict(re.findall(r"\{\s*(LLM_KV_\w+)\s*,\s*\"([^\"]+)\"\s*\}", arch_cpp))
    tensor_names = dict(re.findall(r"\{\s*(LLM_TENSOR_\w+)\s*,\s*\"([^\"]+)\"\s*\}", arch_cpp))
    hp_defaults = {
        m.group(1): " ".join(m.group(2).split())
        for m in re.finditer(
            r"\b(?:u?int\d+_t|float|bool|double|enum\s+\w+|llama_\w+)\s+(\w+)\s*=\s*([^;]+);",
            read("src/llama-hparams.h"),
        )
    }

    model_cpp = read("src/llama-model.cpp")
    mapping_body = next(b for n, b in _functions(model_cpp, "llama_model_mapping"))
    arch_class: dict[str, str] = {}
    pending: list[str] = []
    for m in re.finditer(r"case\s+(LLM_ARCH_\w+)\s*:|new\s+llama_model_(\w+)\s*\(", mapping_body):
        if m.group(1):
            pending.append(m.group(1))
        else:
            for enum in pending:
                arch_class[arch_names[enum]] = m.group(2)
            pending = []

    models_h = read("src/models/models.h")
    parent: dict[str, str] = {}
    own_loader: set[str] = set()
    own_tensors: set[str] = set()
    for m in re.finditer(r"struct\s+llama_model_(\w+)\s*:\s*public\s+llama_model_(\w+)\s*\{", models_h):
        parent[m.group(1)] = m.group(2)
        body = models_h[m.end() : _block(models_h, m.end() - 1)]
        if re.search(r"void\s+load_arch_hparams\s*\(", body):
            own_loader.add(m.group(1))
        if re.search(r"void\s+load_arch_tensors\s*\(", body):
            own_tensors.add(m.group(1))

    helpers: dict[str, list[Read]] = {}
    for name, body in _functions(model_cpp, r"llama_model_base::\w+"):
        short = name.split("::")[1]
        if short not in ("load_hparams", "load_tensors", "load_stats", "load_vocab") and "ml.get_" in body:
            helpers[short] = _reads(body, kv_names, hp_defaults, {}, {})
    common_body = next(b for n, b in _functions(model_cpp, r"llama_model_base::load_hparams"))
    common_body = common_body[: common_body.index("load_arch_hparams(ml)")]
    common, common_by_arch = _common_reads(common_body, kv_names, hp_defaults, arch_names)
    # llama_vocab::impl::load reads a few `%s.` keys too (vocab_size without a token list):
    # for every arch, on some tokenizer paths only.
    vocab = read("src/llama-vocab.cpp")
    common += [
        r._replace(conditional=True, required=False)
        for r in _reads(vocab, kv_names, hp_defaults, {}, {})
        if r.key.startswith("%s.")
    ]

    loaders: dict[str, list[Read]] = {}
    output_first: set[str] = set()  # classes whose tied output is created before tok_embd
    lazy: dict[str, tuple[str, ...]] = {}  # class -> tensors created with TENSOR_READ_LAZY
    for path in sorted((src / "src" / "models").glob("*.cpp")):
        text = _strip_comments(path.read_text(encoding="utf-8"))
        for name, body in _functions(text, r"llama_model_\w+::load_arch_tensors"):
            cls = name.split("::")[0][len("llama_model_") :]
            embd = re.findall(r"create_tensor\(\s*tn\(LLM_TENSOR_TOKEN_EMBD\b[^;]*;", body)
            if embd and "TENSOR_DUPLICATED" in embd[0]:
                output_first.add(cls)
            found = re.findall(r"create_tensor\(\s*tn\((LLM_TENSOR_\w+)[^;]*TENSOR_READ_LAZY", body)
            lazy[cls] = tuple(sorted({tensor_names[e] for e in found}))
        local: dict[str, tuple[str, bool]] = {}
        for name, body in _functions(text, r"\w+"):
            m = re.search(r"ml\.(get_\w+)\s*\(\s*kid\s*,[^;]*?(true|false)?\s*\)\s*;", body)
            if m and not name.startswith("llama_model_"):
                local[name] = (m.group(1), m.group(2) != "false")
        for name, body in _functions(text, r"llama_model_\w+::load_arch_hparams"):
            cls = name.split("::")[0][len("llama_model_") :]
            loaders[cls] = _reads(body, kv_names, hp_defaults, helpers, local)

    def loader_of(cls: str, own: set[str] = own_loader) -> str | None:
        while cls not in own:
            if cls not in parent or parent[cls] == "base":
                return None
            cls = parent[cls]
        return cls

    archs = {arch: loader_of(cls) for arch, cls in sorted(arch_class.items())}
    missing = [c for c in archs.values() if c is not None and c not in loaders]
    if missing:
        raise SystemExit(f"no load_arch_hparams body found for {missing}")
    return {
        "archs": archs,
        "loaders": {c: loaders[c] for c in sorted(set(archs.values()) - {None})},
        "common": common,
        "common_by_arch": common_by_arch,
        "unmapped": sorted(set(arch_names.values()) - set(arch_class)),
        "output_first": sorted(a for a, c in arch_class.items() if loader_of(c, own_tensors) in output_first),
        "lazy": {
            a: lazy[t]
            for a, c in sorted(arch_class.items())
            if lazy.get(t := loader_of(c, own_tensors) or "")
        },
    }


def _common_reads(
    body: str, kv_names: dict[str, str], hp_defaults: dict[str, str], arch_names: dict[str, str]
) -> tuple[list[Read], dict[str, list[Read]]]:
    """Reads of llama_model_base::load_hparams before load_arch_hparams: those inside an
    `if (arch == LLM_ARCH_X …)` block belong to those archs only."""
    common: list[Read] = []
    by_arch: dict[str, list[Read]] = {}
    blocks = []
    for m in re.finditer(r"if\s*\(([^{]*?LLM_ARCH_[^{]*)\)\s*\{", body):
        end = _block(body, m.end() - 1)
        blocks.append((m.end(), end, [arch_names[e] for e in re.findall(r"LLM_ARCH_\w+", m.group(1))]))
    for r, m in zip(_reads(body, kv_names, hp_defaults, {}, {}), _CALL.finditer(body)):
        owners = [a for start, end, arcs in blocks if start <= m.start() < end for a in arcs]
        if owners:
            for a in owners:
                by_arch.setdefault(a, []).append(r._replace(conditional=False))
        else:
            common.append(r)
    return common, by_arch


def _reads_table(items: Iterable[tuple[str, list[Read]]]) -> list[str]:
    """The body of a ``{name: {key: read}}`` literal, one merged read per key."""
    lines: list[str] = []
    for name, reads in items:
        lines.append(f"    {name!r}: {{")
        lines += [f"        {k!r}: {v!r}," for k, v in _merge(reads).items()]
        lines.append("    },")
    return lines


def _merge(reads: list[Read]) -> dict[str, tuple[str, bool, bool, str | None]]:
    """One entry per key: the first read's call, required if any unconditional read requires
    it, conditional only if every read is."""
    out: dict[str, tuple[str, bool, bool, str | None]] = {}
    for r in reads:
        if r.key not in out:
            out[r.key] = (r.how, r.required and not r.conditional, r.conditional, r.default)
        else:
            how, req, cond, dflt = out[r.key]
            how = how if r.how in how.split("+") else f"{how}+{r.how}"
            out[r.key] = (how, req or (r.required and not r.conditional), cond and r.conditional, dflt)
    return out


def render(data: dict[str, object]) -> str:
    """The generated module's text (deterministic)."""
    lines = [
        '"""GENERATED by tools/gen_arch_table.py from llama.cpp ' + COMMIT + " - do not edit.",
        "",
        "Which hparam keys llama.cpp's loader reads, per architecture. Keys are GGUF key formats",
        '("%s." = the architecture name). Each read: (how, required, conditional, default):',
        "how = the loader calls, " + "-joined (get_key, get_key_or_arr = scalar or one entry per",
        "layer, get_arr, get_arr_n = array length), required = a missing key fails the load, conditional = the",
        "read happens only on some path (an if, a loop, after || or &&), default = the C++ value",
        "the target holds when the key is absent (None: unknown). Use engine.gguf.arch_keys.",
        '"""',
        "from __future__ import annotations",
        "",
        "Read = tuple[str, bool, bool, 'str | None']",
        "",
        f"SOURCE = {COMMIT!r}",
        "",
        "# llama_model_base::load_hparams, for every architecture (before load_arch_hparams).",
        "COMMON: dict[str, Read] = {",
    ]
    lines += [f"    {k!r}: {v!r}," for k, v in _merge(data["common"]).items()]  # type: ignore[arg-type]
    lines += [
        "}",
        "",
        "# load_hparams reads under `if (arch == LLM_ARCH_…)`.",
        "COMMON_BY_ARCH: dict[str, dict[str, Read]] = {",
    ]
    lines += _reads_table(sorted(data["common_by_arch"].items()))  # type: ignore[attr-defined]
    lines += [
        "}",
        "",
        "# architecture -> class whose load_arch_hparams runs (inheritance resolved);",
        "# None: llama_model_base's empty default (no arch-specific keys).",
        "ARCH_LOADER: dict[str, str | None] = {",
    ]
    lines += [f"    {a!r}: {c!r}," for a, c in data["archs"].items()]  # type: ignore[attr-defined]
    lines += [
        "}",
        "",
        "# loader class -> the keys its load_arch_hparams reads.",
        "LOADER_READS: dict[str, dict[str, Read]] = {",
    ]
    lines += _reads_table(data["loaders"].items())  # type: ignore[attr-defined]
    lines += [
        "}",
        "",
        "# In LLM_ARCH_NAMES but refused by llama_model_mapping.",
        f"UNMAPPED = {tuple(data['unmapped'])!r}",
        "",
        "# load_arch_tensors creates a tied output (token_embd, TENSOR_DUPLICATED) before tok_embd:",
        "# in one host buffer that is a second tensor, so a second copy unless the buffer is mmapped.",
        f"TIED_OUTPUT_FIRST = {tuple(data['output_first'])!r}",
        "",
        "# Tensors load_arch_tensors creates with TENSOR_READ_LAZY (a mapped buffer of their own when",
        "# over llama_model_loader::lazy_read's 4 GiB), by name format.",
        f"LAZY_TENSORS: dict[str, tuple[str, ...]] = {data['lazy']!r}",
        "",
    ]  # type: ignore[call-overload]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    src = find_source(argv)
    if src is None:
        print("llama.cpp source not found: run `make llama-src` or pass its root", file=sys.stderr)
        return 2
    text = render(parse(src))
    if "--check" in argv:
        same = OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT} differs from the source: regenerate it")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
