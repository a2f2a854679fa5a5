"""GGUF file names on the Hub: which files make one model, its quantization, and its role.

A repository of GGUFs holds one file per quantization (``Model-Q4_K_M.gguf``), models too big
for one file split into parts (``Model-Q8_0-00001-of-00003.gguf``, often in a folder per
quant), and companions that are not chat models on their own: vision projectors (``mmproj``),
draft/assistant models for speculative decoding and multi-token-prediction heads (``MTP``).
The user picks a *model*, so parts are grouped into one entry and companions are labelled.
Pure functions: nothing here touches the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:UD-)?("
    r"I?Q\d(?:_[A-Z0-9]{1,3}){0,3}|TQ\d_\d|MXFP4(?:_MOE)?|NVFP4|BF16|F16|F32|FP16|FP32"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_MTP_RE = re.compile(r"(?<![a-z0-9])mtp(?![a-z])", re.IGNORECASE)
ROLES = ("model", "mmproj", "draft", "mtp")
# repo ids: "owner/name", as the Hub allows them (huggingface_hub's validate_repo_id, stricter)
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def valid_repo_id(repo: str) -> bool:
    """True for ``owner/name`` made of the characters the Hub allows (no ``..`` or ``--``)."""
    return bool(_REPO_RE.fullmatch(repo)) and ".." not in repo and "--" not in repo


def valid_file_name(name: str) -> bool:
    """A relative path inside a repo that cannot escape a folder it is joined to."""
    parts = name.split("/")
    return (
        0 < len(name) <= 512
        and not name.startswith("/")
        and "\\" not in name
        and "\x00" not in name
        and all(p not in ("", ".", "..") for p in parts)
        and name.isprintable()
    )


def quant_of(name: str) -> str:
    """The quantization label in a file name (``Q4_K_M``, ``IQ3_XXS``, ``BF16``), else ``?``."""
    stem = SPLIT_RE.sub("", name.rsplit("/", 1)[-1])
    stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
    found = _QUANT_RE.findall(stem)
    if not found:
        return "?"
    q = found[-1].upper()
    return {"FP16": "F16", "FP32": "F32"}.get(q, q)


def role_of(name: str) -> str:
    """``mmproj``, ``draft`` (assistant/draft models), ``mtp`` or ``model``."""
    base = name.rsplit("/", 1)[-1].lower()
    if "mmproj" in base:
        return "mmproj"
    if "assistant" in base or "draft" in base:
        return "draft"
    if _MTP_RE.search(base):
        return "mtp"
    return "model"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository as the Hub lists it."""

    name: str  # path inside the repo
    size: int | None
    sha256: str | None  # LFS files: the content's sha256 (what a download is checked against)


@dataclass(frozen=True)
class RemoteModel:
    """One loadable GGUF: a single file, or all parts of a split model in order."""

    repo: str
    name: str  # the file name, or for a split model its first part's name without the suffix
    files: tuple[RemoteFile, ...]
    quant: str
    role: str
    n_parts: int  # parts the names announce (a listing may lack some)

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    @property
    def complete(self) -> bool:
        return len(self.files) == self.n_parts

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "name": self.name,
            "quant": self.quant,
            "role": self.role,
            "size": self.size,
            "n_parts": self.n_parts,
            "complete": self.complete,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


def group_files(repo: str, files: list[RemoteFile]) -> list[RemoteModel]:
    """The repository's GGUF models: parts grouped, companions labelled, in name order."""
    groups: dict[str, list[tuple[int, int, RemoteFile]]] = {}
    for f in files:
        if not f.name.lower().endswith(".gguf") or not valid_file_name(f.name):
            continue
        m = SPLIT_RE.search(f.name)
        key = f.name[: m.start()] + ".gguf" if m else f.name
        part, total = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
        groups.setdefault(key, []).append((part, total, f))
    models = []
    for key, parts in sorted(groups.items()):
        parts.sort(key=lambda p: p[0])
        n_parts = max(p[1] for p in parts)
        unique = {p[0]: p[2] for p in parts if 1 <= p[0] <= n_parts}
        models.append(
            RemoteModel(
                repo, key, tuple(unique[i] for i in sorted(unique)), quant_of(key), role_of(key), n_parts
            )
        )
    return models


def find_model(models: list[RemoteModel], wanted: str) -> RemoteModel | None:
    """The model a user named: by any of its file names, its grouped name, or a unique quant
    label (``Q4_K_M``) among the chat models."""
    for m in models:
        if wanted == m.name or any(wanted == f.name for f in m.files):
            return m
    by_quant = [m for m in models if m.role == "model" and m.quant.lower() == wanted.lower()]
    return by_quant[0] if len(by_quant) == 1 else None
