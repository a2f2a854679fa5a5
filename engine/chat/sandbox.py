"""The cage chat templates run in: Jinja2's immutable sandbox plus time and size limits.

A chat template is a program shipped inside a GGUF file from the internet, and it runs in the
GUI process. The sandbox stops it from reaching Python internals; the limits here stop it from
hanging the app or exhausting memory. Two kinds of attack need two kinds of guard:

* many small steps (loops, recursion, a string doubled in a loop): a trace function sees every
  line the compiled template runs, and stops it after a deadline or once the process has grown
  by `MAX_GROWTH_BYTES` since rendering began;
* one C call with a small input and a huge result (``'x'.center(10**10)``, ``'%9999999999s'``,
  ``s.replace('', big)``, ``big.join(many)``, ``s | indent(big)``): no Python line runs while
  it allocates, so every call, filter, operator and format string is checked *before* it runs,
  with the size of its result bounded from its inputs.

Anything caught becomes a one-line `TemplateError`; legitimate templates (tens of lines over a
conversation) stay far below every limit.
"""

from __future__ import annotations

import functools
import re
import string
import sys
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import psutil
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.core.errors import TemplateError

RENDER_DEADLINE_S = 1.0
MAX_OUTPUT_CHARS = 4_000_000  # also the largest number a template may pass to any function
MAX_GROWTH_BYTES = 256 << 20
_MAX_POW_BITS = 1 << 16
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")
_PROC = psutil.Process()


def _refuse(what: str) -> TemplateError:
    return TemplateError(f"the chat template {what}")


class Deadline:
    """Raises inside the template's own Python frames once time or memory is up.

    Jinja2 compiles a template to Python code, so a trace function sees every line it runs,
    including loops that call nothing (which the sandbox's call hooks would never see). Memory
    is sampled every few milliseconds (a /proc read costs ~10 µs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.rss0 = _PROC.memory_info().rss
        self.next_rss = 0.0

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        now = time.monotonic()
        if now > self.end:
            raise _refuse(f"took too long to render (over {self.seconds:g} s)")
        if now > self.next_rss:
            self.next_rss = now + 0.005
            if _PROC.memory_info().rss - self.rss0 > MAX_GROWTH_BYTES:
                raise _refuse("uses too much memory")
        return self._trace

    def __enter__(self) -> Deadline:
        self._previous = sys.gettrace()
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._previous)


def _check_numbers(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if type(value) is int and abs(value) > MAX_OUTPUT_CHARS:
            raise _refuse("passes an absurdly large number to a function")


def _check_size(estimate: int) -> None:
    if estimate > MAX_OUTPUT_CHARS:
        raise _refuse("builds a string that is too large")


def _check_percent(fmt: str) -> None:
    for m in _PERCENT.finditer(fmt):
        if any(g and int(g) > MAX_OUTPUT_CHARS for g in m.groups()):
            raise _refuse("formats with an absurdly large width")


def _check_format(fmt: str) -> None:
    for _text, _field, spec, _conv in string.Formatter().parse(fmt):
        if spec and any(int(n) > MAX_OUTPUT_CHARS for n in re.findall(r"\d+", spec)):
            raise _refuse("formats with an absurdly large width")


def _replaced(s: str, old: str, new: str, count: int = -1) -> int:
    """Length of s.replace(old, new, count), computed without doing it."""
    n = s.count(old) if old else len(s) + 1
    n = min(n, count) if count is not None and count >= 0 else n
    return len(s) + n * max(0, len(new) - len(old))


def _joined(sep: str, items: list[Any]) -> int:
    return len(sep) * max(0, len(items) - 1) + sum(len(x) for x in items if isinstance(x, str))


def _check_str_method(s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Bound the result of the str methods whose output is a product of their inputs."""
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        _check_size(_replaced(s, args[0], str(args[1]), *args[2:3]))
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        _check_size(len(s) + s.count("\t") * (tab if type(tab) is int else 8))
    elif name == "join" and args:
        items = list(args[0])
        _check_size(_joined(s, items))
        return (items, *args[1:])
    return args


def _guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, with its arguments and (for the amplifying ones) its result size checked."""
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_numbers(args, kwargs)
        value, rest = (args[skip], args[skip + 1 :]) if len(args) > skip else (None, ())
        if name == "replace" and len(rest) >= 2:
            _check_size(_replaced(str(value), str(rest[0]), str(rest[1]), *rest[2:3]))
        elif name == "indent" and value is not None:
            width = rest[0] if rest else kwargs.get("width", 4)
            unit = len(width) if isinstance(width, str) else int(width or 0)
            _check_size(len(str(value)) + (str(value).count("\n") + 1) * unit)
        elif name == "join" and value is not None:
            items = [str(x) for x in value]
            sep = rest[0] if rest else kwargs.get("d", "")
            _check_size(_joined(str(sep), items))
            args = (*args[:skip], items, *rest)
        elif name == "format" and isinstance(value, str):
            _check_percent(value)
        return fn(*args, **kwargs)

    return guarded


class _Generator(CodeGenerator):
    """Compiles ``a ~ b`` to a size-checked join (Jinja2 emits a bare ``str_join`` for it)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every size-amplifying operation bounded before it runs."""

    code_generator_class = _Generator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Check sizes *before* computing: ``"x" * 10**12`` must never be attempted."""
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and type(n) is int:
                    _check_size(len(seq) * max(n, 0))
        elif operator == "**" and isinstance(right, (int, float)):
            bits = left.bit_length() if type(left) is int else 64
            if abs(right) > 1024 or bits * abs(right) > _MAX_POW_BITS:
                raise _refuse("computes an absurdly large number")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            _check_size(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            _check_percent(left)
            _check_numbers(right if isinstance(right, tuple) else (right,), {})
        return super().call_binop(context, operator, left, right)

    def concat(self, parts: Iterable[Any]) -> str:  # jinja2 passes any values (its stub: Iterable[str])
        texts = [str(p) for p in parts]
        _check_size(sum(len(t) for t in texts))
        return "".join(texts)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_numbers(args, kwargs)
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            name = getattr(target, "__name__", "")
            if name in ("format", "format_map"):
                _check_format(owner)
            else:
                args = _check_str_method(owner, name, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        """Reaching for internals is an attack, not a typo: refuse loudly instead of rendering
        an empty string (the sandbox's default)."""
        raise _refuse(f"tried to reach {attribute!r} of a {type(obj).__name__}, which the sandbox forbids")
