"""The tests' own layout: test modules share code through tests/helpers/, never through each other.

A test module imported by another runs its module-level code (fixtures, marks, Qt imports) twice,
under two names, and pytest collects nothing from the import; so helpers live in tests/helpers/,
fixtures in tests/conftest.py, and every other module under tests/ is a ``test_*.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported(path: Path) -> list[str]:
    """Every module name ``path`` imports (``from x import y`` also as ``x.y``: y may be a module)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_no_module_under_tests_imports_a_test_module_or_conftest() -> None:
    offenders = [
        f"{path.relative_to(TESTS)} imports {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for name in _imported(path)
        if name.split(".")[-1].startswith("test_") or name.split(".")[-1] == "conftest"
    ]
    assert offenders == [], "import shared code from tests.helpers instead:\n" + "\n".join(offenders)


def test_helpers_live_in_tests_helpers() -> None:
    stray = [p.name for p in TESTS.glob("*.py") if p.name != "conftest.py" and not p.name.startswith("test_")]
    assert stray == [], f"move non-test modules to tests/helpers/: {stray}"
    assert not list((TESTS / "helpers").glob("test_*.py")), "tests/helpers/ holds no tests"
